"""Shaping masks and putting images together, in numpy and Pillow only (no torch, no scipy):
connected parts, growing and shrinking, feathering, compositing the generated desk into the
photo, before/after pictures and mask overlays.

Growing, shrinking and feathering are separable running-window sums (cumulative sums along
each axis), so they cost a few passes over the pixels whatever the radius: growing uses a
square (Chebyshev) neighbourhood, feathering a tent-like kernel made of two box windows.
numpy is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

from .._exceptions import ConfigError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "before_after",
    "composite_unmasked",
    "connected_components",
    "feather_mask",
    "grow_mask",
    "mask_overlay",
]


def _window_sum(values: np.ndarray, radius: int, axis: int, *, edge: bool) -> np.ndarray:
    """The sum of each run of ``2 * radius + 1`` values along ``axis``, centred on each one
    (int64). Outside the array: zeros, or with ``edge`` the values at the border repeated."""
    import numpy as np

    if radius <= 0:
        return values.astype(np.int64, copy=False)
    pad = [(0, 0)] * values.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(values, pad, mode="edge" if edge else "constant")
    sums = np.cumsum(padded, axis=axis, dtype=np.int64)
    size = values.shape[axis]

    def part(start: int, stop: int) -> tuple[slice, ...]:
        index = [slice(None)] * values.ndim
        index[axis] = slice(start, stop)
        return tuple(index)

    # sums[i] holds padded[0..i]: the run centred on value i is sums[i + 2r] - sums[i - 1]
    out: np.ndarray = sums[part(2 * radius, 2 * radius + size)].copy()
    out[part(1, size)] -= sums[part(0, size - 1)]
    return out


def _dilate(binary: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within ``radius`` (Chebyshev distance) of a True pixel."""
    import numpy as np

    rows = _window_sum(binary.astype(np.int32), radius, 1, edge=False) > 0
    return _window_sum(rows.astype(np.int32), radius, 0, edge=False) > 0


def grow_mask(binary: np.ndarray, pixels: int) -> np.ndarray:
    """``binary`` (a boolean H x W array) grown by ``pixels``: every pixel within that
    Chebyshev distance (a ``2 * pixels + 1`` square) of the region; negative ``pixels``
    shrinks it by as much (pixels that far from anything outside it stay). The photo's border
    does not shrink a region that touches it (beyond the border counts as inside)."""
    import numpy as np

    region = np.asarray(binary, dtype=bool)
    if pixels > 0:
        return _dilate(region, pixels)
    if pixels < 0:
        shrunk: np.ndarray = ~_dilate(~region, -pixels)
        return shrunk
    same: np.ndarray = region.copy()
    return same


def feather_mask(binary: np.ndarray, blur: int) -> np.ndarray:
    """A soft uint8 mask (0..255) from a boolean H x W region: the edge ramps over ``blur``
    pixels centred on the region's edge. Pixels more than ``blur // 2`` inside the region are
    exactly 255, pixels more than ``blur // 2`` outside it exactly 0 (the feather never reaches
    further out). The kernel is two box windows one after the other (a tent, close to a
    Gaussian); beyond the photo's border the border pixels are repeated."""
    import numpy as np

    region = np.asarray(binary, dtype=bool)
    reach = blur // 2
    if reach <= 0:
        return region.astype(np.uint8) * 255
    first, second = (reach + 1) // 2, reach // 2
    total = (2 * first + 1) * (2 * second + 1)
    sums = region.astype(np.int64)
    for axis in (1, 0):
        sums = _window_sum(sums, first, axis, edge=True)
        sums = _window_sum(sums, second, axis, edge=True)
    area = total * total  # exact integers: 255 only where the whole window is inside
    return ((sums * 255 + area // 2) // area).astype(np.uint8)


def connected_components(binary: np.ndarray) -> tuple[np.ndarray, int]:
    """The 4-connected parts of a boolean H x W array: an int32 map (0 outside, parts
    numbered from 1 in the order their first pixel comes in reading order) and their count.

    Union-find over the pixels' neighbour pairs, vectorised: each round joins every pair's two
    trees under the smaller root, then pointer jumping flattens the trees; a few rounds suffice
    (well under a second for a 512 x 512 map)."""
    import numpy as np

    region = np.asarray(binary, dtype=bool)
    height, width = region.shape
    flat = region.ravel()
    pixels = np.flatnonzero(flat)
    out = np.zeros(height * width, dtype=np.int32)
    if pixels.size == 0:
        return out.reshape(height, width), 0
    node = np.full(height * width, -1, dtype=np.int64)
    node[pixels] = np.arange(pixels.size)
    across = flat[:-1] & flat[1:]
    across[width - 1 :: width] = False  # no pairs from a row's end to the next row's start
    left = np.flatnonzero(across)
    top = np.flatnonzero(flat[:-width] & flat[width:])
    first = np.concatenate([node[left], node[top]])
    second = np.concatenate([node[left + 1], node[top + width]])
    parent = np.arange(pixels.size)
    while first.size:
        a, b = parent[first], parent[second]
        apart = a != b  # pairs already in one tree stay so: dropped for good
        first, second, a, b = first[apart], second[apart], a[apart], b[apart]
        if not first.size:
            break
        np.minimum.at(parent, np.maximum(a, b), np.minimum(a, b))  # a, b are roots
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    roots, numbers = np.unique(parent, return_inverse=True)
    out[pixels] = numbers.astype(np.int32) + 1
    return out.reshape(height, width), int(roots.size)


def composite_unmasked(
    photo: Image.Image, generated: Image.Image, mask: Image.Image
) -> Image.Image:
    """``generated`` where ``mask`` is white, ``photo`` where it is black, blended in between,
    RGB at the photo's size. ``generated`` is resized to the photo (LANCZOS) and ``mask``
    (grey, ``L``) too (bilinear) when their sizes differ. Where the mask is 0 the result's
    pixels are the photo's own, byte for byte; where it is 255, the generated image's."""
    base = photo.convert("RGB")
    image = generated.convert("RGB")
    if image.size != base.size:
        image = image.resize(base.size, Image.Resampling.LANCZOS)
    grey = mask.convert("L")
    if grey.size != base.size:
        grey = grey.resize(base.size, Image.Resampling.BILINEAR)
    return Image.composite(image, base, grey)


def _caption(canvas: Image.Image, text: str, at: tuple[int, int], height: int) -> None:
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(10, height // 24))
    left, top, right, bottom = draw.textbbox(at, text, font=font)
    pad = max(2, (bottom - top) // 4)
    draw.rectangle((left - pad, top - pad, right + pad, bottom + pad), fill=(0, 0, 0))
    draw.text(at, text, fill=(255, 255, 255), font=font)


def before_after(
    before: Image.Image, after: Image.Image, *, gap: int = 8, labels: bool = True
) -> Image.Image:
    """``before`` and ``after`` side by side (RGB) at ``before``'s height (``after`` resized,
    keeping its aspect ratio), ``gap`` white pixels between, captioned "before" and "after" in
    their top-left corners unless ``labels=False``."""
    if gap < 0:
        raise ConfigError(f"gap={gap}: the gap between the pictures is 0 or more pixels.")
    left = before.convert("RGB")
    right = after.convert("RGB")
    height = left.height
    if right.height != height:
        width = max(1, round(right.width * height / right.height))
        right = right.resize((width, height), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (left.width + gap + right.width, height), (255, 255, 255))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + gap, 0))
    if labels:
        margin = max(4, height // 48)
        _caption(canvas, "before", (margin, margin), height)
        _caption(canvas, "after", (left.width + gap + margin, margin), height)
    return canvas


def mask_overlay(
    photo: Image.Image,
    mask: Image.Image,
    *,
    color: tuple[int, int, int] = (255, 64, 64),
    opacity: float = 0.5,
) -> Image.Image:
    """``photo`` (RGB) with ``color`` laid over it where ``mask`` is white, at ``opacity``
    (soft where the mask is grey): what will change, at a glance. ``mask`` is resized to the
    photo (bilinear) when its size differs."""
    if not 0.0 <= opacity <= 1.0:
        raise ConfigError(f"opacity={opacity}: use a value from 0 (invisible) to 1 (opaque).")
    base = photo.convert("RGB")
    grey = mask.convert("L")
    if grey.size != base.size:
        grey = grey.resize(base.size, Image.Resampling.BILINEAR)
    tinted = Image.blend(base, Image.new("RGB", base.size, tuple(color)), opacity)
    return Image.composite(tinted, base, grey)
