"""Mask shaping and picture making in numpy and Pillow: growing, shrinking, feathering,
connected parts, compositing, before/after pictures, overlays."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from PIL import Image

from deskgen._exceptions import ConfigError
from deskgen.masks import before_after, composite_unmasked, mask_overlay
from deskgen.masks._shape import connected_components, feather_mask, grow_mask


def _chebyshev_distance(region: np.ndarray) -> np.ndarray:
    """Each pixel's Chebyshev distance to the nearest True pixel (brute force)."""
    ys, xs = np.nonzero(region)
    yy, xx = np.indices(region.shape)
    far = np.maximum(abs(yy[..., None] - ys), abs(xx[..., None] - xs))
    return np.asarray(far.min(axis=-1))


def _random_region(seed: int, shape: tuple[int, int] = (30, 40)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    region = np.zeros(shape, dtype=bool)
    for _ in range(4):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        region[y : y + rng.integers(1, 9), x : x + rng.integers(1, 9)] = True
    return region


@pytest.mark.parametrize("pixels", [1, 3, 7])
def test_grow_covers_exactly_the_chebyshev_neighbourhood(pixels: int) -> None:
    for seed in range(5):
        region = _random_region(seed)
        assert np.array_equal(grow_mask(region, pixels), _chebyshev_distance(region) <= pixels)


def test_grow_of_one_pixel_is_a_square() -> None:
    region = np.zeros((21, 21), dtype=bool)
    region[10, 10] = True
    grown = grow_mask(region, 3)
    assert grown.sum() == 49
    assert grown[7:14, 7:14].all()


def test_shrink_is_the_opposite_of_growing_the_rest() -> None:
    for seed in range(5):
        region = _random_region(seed)
        outside_far = _chebyshev_distance(~region) > 2  # pixels 3+ from anything outside
        # the border counts as inside: compare away from it
        assert np.array_equal(grow_mask(region, -2)[3:-3, 3:-3], outside_far[3:-3, 3:-3])


def test_shrink_keeps_a_region_that_meets_the_border() -> None:
    region = np.zeros((20, 20), dtype=bool)
    region[10:, :] = True  # the bottom half: the desk reaching the photo's edges
    shrunk = grow_mask(region, -3)
    assert np.array_equal(np.flatnonzero(shrunk.any(axis=1)), np.arange(13, 20))
    assert shrunk[19].all()
    square = np.zeros((20, 20), dtype=bool)
    square[4:15, 4:15] = True
    assert np.array_equal(np.argwhere(grow_mask(square, -2)).min(axis=0), [6, 6])
    assert grow_mask(square, -2).sum() == 49
    assert not grow_mask(square, -6).any()


def test_grow_zero_is_a_copy() -> None:
    region = _random_region(0)
    same = grow_mask(region, 0)
    assert np.array_equal(same, region)
    assert same is not region


@pytest.mark.parametrize("blur", [1, 2, 5, 8, 13])
def test_feather_stays_within_half_the_blur_of_the_edge(blur: int) -> None:
    reach = blur // 2
    for seed in range(3):
        region = _random_region(seed, (30, 40))
        soft = feather_mask(region, blur)
        assert soft.dtype == np.uint8
        outside = _chebyshev_distance(region)
        assert (soft[outside > reach] == 0).all()
        assert (soft[outside > blur] == 0).all()
        assert (soft[_chebyshev_distance(~region) > reach] == 255).all()


def test_feather_ramps_smoothly_across_an_edge() -> None:
    region = np.zeros((9, 40), dtype=bool)
    region[:, 20:] = True
    row = feather_mask(region, 16)[4].astype(int)
    assert (row[:12] == 0).all()
    assert (row[28:] == 255).all()
    assert (np.diff(row) >= 0).all()
    assert len(set(row[12:28].tolist())) > 8  # grey steps, not a hard edge
    assert 100 < row[19] < 160 or 100 < row[20] < 160  # about half at the edge


def test_feather_zero_is_the_hard_region() -> None:
    region = _random_region(1)
    assert np.array_equal(feather_mask(region, 0), region.astype(np.uint8) * 255)
    assert np.array_equal(feather_mask(region, 1), region.astype(np.uint8) * 255)


def test_feather_keeps_the_border_white() -> None:
    region = np.ones((10, 10), dtype=bool)
    assert (feather_mask(region, 8) == 255).all()


def _components(binary: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected parts by breadth-first search, numbered in reading order."""
    labels = np.zeros(binary.shape, dtype=int)
    count = 0
    height, width = binary.shape
    for y, x in zip(*np.nonzero(binary), strict=True):
        if labels[y, x]:
            continue
        count += 1
        labels[y, x] = count
        queue = deque([(y, x)])
        while queue:
            cy, cx = queue.popleft()
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < height and 0 <= nx < width and binary[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = count
                    queue.append((ny, nx))
    return labels, count


def test_connected_components_of_a_known_pattern() -> None:
    pattern = np.array(
        [
            [1, 1, 0, 0, 1],
            [0, 1, 0, 1, 1],
            [0, 0, 1, 0, 0],  # touches the first part only at a corner: its own part
            [1, 0, 0, 0, 1],
            [1, 1, 1, 0, 1],
        ],
        dtype=bool,
    )
    labels, count = connected_components(pattern)
    assert count == 5
    assert labels.dtype == np.int32
    assert labels[0, 0] == labels[1, 1] == 1
    assert labels[0, 4] == labels[1, 3] == 2
    assert labels[2, 2] == 3
    assert labels[3, 0] == labels[4, 2] == 4
    assert labels[3, 4] == labels[4, 4] == 5
    assert (labels[~pattern] == 0).all()


def test_connected_components_match_a_breadth_first_search() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        shape = (int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        binary = rng.random(shape) < rng.uniform(0.2, 0.8)
        labels, count = connected_components(binary)
        expected, expected_count = _components(binary)
        assert count == expected_count
        assert np.array_equal(labels, expected)


def test_connected_components_of_nothing_and_of_a_large_map() -> None:
    labels, count = connected_components(np.zeros((4, 5), dtype=bool))
    assert count == 0
    assert labels.shape == (4, 5)
    assert not labels.any()
    comb = np.zeros((512, 512), dtype=bool)  # long winding parts: one part in all
    comb[::2] = True
    comb[:, 0] = True
    labels, count = connected_components(comb)
    assert count == 1
    noisy = np.random.default_rng(1).random((512, 512)) < 0.5
    labels, count = connected_components(noisy)
    assert count == labels.max() > 1000


def _pictures(size: tuple[int, int] = (40, 30)) -> tuple[Image.Image, Image.Image, Image.Image]:
    rng = np.random.default_rng(0)
    width, height = size
    photo = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    generated = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    grey = np.zeros((height, width), dtype=np.uint8)
    grey[:, width // 2 :] = 255
    grey[:, width // 2 - 4 : width // 2] = np.linspace(40, 220, 4, dtype=np.uint8)
    return photo, generated, Image.fromarray(grey, "L")


def test_composite_is_exact_where_the_mask_is_black_or_white() -> None:
    photo, generated, mask = _pictures()
    out = composite_unmasked(photo, generated, mask)
    assert out.mode == "RGB"
    assert out.size == photo.size
    pixels, grey = np.asarray(out), np.asarray(mask)
    assert np.array_equal(pixels[grey == 0], np.asarray(photo)[grey == 0])
    assert np.array_equal(pixels[grey == 255], np.asarray(generated)[grey == 255])
    between = (grey > 0) & (grey < 255)
    low = np.minimum(np.asarray(photo), np.asarray(generated))[between].astype(int)
    high = np.maximum(np.asarray(photo), np.asarray(generated))[between].astype(int)
    blended = pixels[between].astype(int)
    assert ((blended >= low - 1) & (blended <= high + 1)).all()


def test_composite_resizes_the_generated_image_to_the_photo() -> None:
    photo, _, mask = _pictures((40, 30))
    generated = Image.new("RGB", (80, 60), (10, 200, 30))
    out = composite_unmasked(photo, generated, mask)
    assert out.size == (40, 30)
    grey = np.asarray(mask)
    assert np.array_equal(np.asarray(out)[grey == 0], np.asarray(photo)[grey == 0])
    assert (np.asarray(out)[grey == 255] == (10, 200, 30)).all()


def test_before_after_puts_the_pictures_side_by_side() -> None:
    before = Image.new("RGB", (60, 40), (200, 0, 0))
    after = Image.new("RGB", (120, 80), (0, 0, 200))
    plain = before_after(before, after, labels=False)
    assert plain.size == (60 + 8 + 60, 40)
    pixels = np.asarray(plain)
    assert (pixels[:, :60] == (200, 0, 0)).all()
    assert (pixels[:, 60:68] == 255).all()
    assert (pixels[:, 68:] == (0, 0, 200)).all()
    captioned = before_after(before, after, gap=0)
    assert captioned.size == (120, 40)
    assert not np.array_equal(np.asarray(captioned)[:, :60], pixels[:, :60])  # a caption
    wide = before_after(before, Image.new("RGB", (40, 10)), labels=False)
    assert wide.size == (60 + 8 + 160, 40)
    with pytest.raises(ConfigError):
        before_after(before, after, gap=-1)


def test_mask_overlay_tints_only_the_masked_part() -> None:
    photo, _, mask = _pictures()
    out = mask_overlay(photo, mask, color=(0, 255, 0), opacity=0.5)
    grey = np.asarray(mask)
    pixels, original = np.asarray(out).astype(int), np.asarray(photo).astype(int)
    assert np.array_equal(pixels[grey == 0], original[grey == 0])
    expected = (original[grey == 255] + np.array([0, 255, 0])) / 2
    assert np.abs(pixels[grey == 255] - expected).max() <= 1
    small = mask_overlay(photo, mask.resize((20, 15)))
    assert small.size == photo.size
    with pytest.raises(ConfigError):
        mask_overlay(photo, mask, opacity=1.5)
