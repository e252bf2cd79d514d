"""The facade's masks (`deskgen._masking`): read or found, checked, recorded, the room put back.

On the fake backend (no weights): what is checked here is the facade's, the same for every
backend; each backend's own inpainting is tested beside it (tests/backends/test_inpaint.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from deskgen import (
    DeskGenerator,
    DeskMask,
    GenerationRequest,
    ImageInputError,
    InvalidRequestError,
    UnsupportedOperationError,
    read_record,
)
from deskgen._masking import fit_box, keep_room, mask_digest
from deskgen._record import a1111_parameters
from deskgen.backends._profile import BackendProfile
from deskgen.testing import FakeBackend, register_fake_backend


def _photo(size: tuple[int, int] = (48, 36)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _mask(size: tuple[int, int] = (48, 36)) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle([12, 9, 35, 35], fill=255)
    return mask


@pytest.fixture(scope="module")
def gen() -> DeskGenerator:
    register_fake_backend("mask-fake")
    return DeskGenerator("mask-fake")


def _outside_is_photo(image: Image.Image, photo: Image.Image, mask: Image.Image) -> bool:
    keep = np.asarray(mask) == 0
    return bool(np.array_equal(np.asarray(image)[keep], np.asarray(photo)[keep]))


def test_a_mask_keeps_the_photo_outside_it(gen: DeskGenerator) -> None:
    photo, mask = _photo(), _mask()
    result = gen.generate(prompt="a tidy desk", image=photo, mask=mask, seed=3, width=32)
    assert result.mode == "inpaint" and result.image.size == photo.size
    assert _outside_is_photo(result.image, photo, mask)
    assert not np.array_equal(np.asarray(result.image), np.asarray(photo))  # inside: changed
    assert result.mask is not None and result.mask.tobytes() == mask.tobytes()
    raw = gen.generate(
        prompt="a tidy desk", image=photo, mask=mask, seed=3, width=32, keep_unmasked=False
    )
    assert raw.image.size == (raw.width, raw.height) != photo.size


def test_the_room_goes_back_over_the_crop_the_model_saw() -> None:
    photo, mask = _photo((48, 36)), Image.new("L", (48, 36), 255)
    assert fit_box((48, 36), (16, 16)) == (6, 0, 42, 36)
    assert fit_box((48, 36), (64, 48)) == (0, 0, 48, 36)
    generated = Image.new("RGB", (16, 16), (1, 2, 3))
    (image,), warnings = keep_room(photo, [generated], mask)
    pixels = np.asarray(image)
    assert np.array_equal(pixels[:, :6], np.asarray(photo)[:, :6])  # left of the crop: kept
    assert (pixels[:, 6:42] == (1, 2, 3)).all()
    assert warnings and "outside the crop" in warnings[0]


def test_masks_are_recorded_by_digest_and_replays_need_them(
    gen: DeskGenerator, tmp_path: Path
) -> None:
    photo, mask = _photo(), _mask()
    result = gen.generate(prompt="a tidy desk", image=photo, mask=mask, seed=3)
    mask_file = tmp_path / "mask.png"
    mask.save(mask_file)
    again = gen.generate(prompt="a tidy desk", image=photo, mask=mask_file, seed=3)
    assert again.request.mask_sha256 is not None
    paths = again.save(tmp_path / "out.png", mask=True)
    assert [p.name for p in paths] == ["out.png", "out.mask.png"]
    with Image.open(paths[1]) as saved:
        assert saved.mode == "L" and saved.tobytes() == mask.tobytes()
    replay = read_record(paths[0])
    assert replay.mask_sha256 == again.request.mask_sha256 and replay.mask is None
    with pytest.raises(InvalidRequestError, match="mask"):
        gen.generate(replay, image=photo)
    same = gen.generate(replay, image=photo, mask=mask_file)
    assert same.image.tobytes() == again.image.tobytes() and not same.warnings
    other = _photo((48, 36)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    with pytest.raises(InvalidRequestError, match="another photo"):
        gen.generate(replay, image=other, mask=mask_file)
    assert result.image.tobytes() == again.image.tobytes()


def test_a1111_text_names_the_inpaint_settings(gen: DeskGenerator) -> None:
    photo, mask = _photo(), _mask()
    text = a1111_parameters(gen.generate(prompt="a desk", image=photo, mask=mask, seed=1), 0)
    assert "Mask blur: 0" in text and "Inpaint area: Whole picture" in text
    assert "Denoising strength" in text


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (Image.new("L", (48, 36), 0), "all black"),
        (Image.new("L", (48, 36), 255), "all white"),
        (Image.new("L", (36, 48), 255), "another shape"),
        (b"GIF89a not really", "image"),
    ],
)
def test_bad_masks_are_refused(gen: DeskGenerator, mask: object, match: str) -> None:
    with pytest.raises(ImageInputError, match=match):
        gen.generate(prompt="a desk", image=_photo(), mask=mask)  # type: ignore[arg-type]


def test_a_mask_of_the_same_aspect_is_resized(gen: DeskGenerator) -> None:
    photo = _photo()
    result = gen.generate(prompt="a desk", image=photo, mask=_mask((96, 72)), seed=1)
    assert result.mask is not None and result.mask.size == photo.size


def test_a_mask_needs_a_photo_and_a_backend_that_takes_one(gen: DeskGenerator) -> None:
    with pytest.raises(InvalidRequestError, match="image="):
        gen.generate(prompt="a desk", mask=_mask())
    with pytest.raises(InvalidRequestError, match="image="):
        gen.generate(prompt="a desk", mask="auto")

    class NoMasks(FakeBackend):
        profile = BackendProfile(modes=("txt2img", "img2img"))

    from deskgen import register_backend

    register_backend("mask-refusing-fake", replace=True)(NoMasks)
    with DeskGenerator("mask-refusing-fake") as other:
        with pytest.raises(UnsupportedOperationError, match="takes no mask"):
            other.generate(prompt="a desk", image=_photo(), mask="auto")  # before any model
        assert other.backend.jobs == []  # type: ignore[attr-defined]


def test_desk_mask_settings_travel_in_the_request() -> None:
    req = GenerationRequest(prompt="a desk", mask=DeskMask(targets=["desk", "monitor"], grow=4))
    assert req.mask is None and req.desk_mask is not None and req.masked
    data = json.loads(req.model_dump_json())
    assert data["desk_mask"]["targets"] == ["desk", "monitor"]
    assert GenerationRequest.model_validate(data).desk_mask == req.desk_mask
    assert GenerationRequest(prompt="a desk", mask="auto").desk_mask == DeskMask()
    with pytest.raises(ValueError, match="not both"):
        GenerationRequest(prompt="a", mask=DeskMask(grow=1), desk_mask=DeskMask(grow=2))


def test_before_after_needs_a_photo(gen: DeskGenerator) -> None:
    result = gen.generate(prompt="a desk", seed=1)
    with pytest.raises(InvalidRequestError, match="no photo"):
        result.before_after()
    with pytest.raises(InvalidRequestError, match="without a mask"):
        result.save("unused.png", mask=True)


def test_mask_digest_is_of_the_pixels() -> None:
    mask = _mask()
    assert mask_digest(mask) == mask_digest(mask.copy())
    assert mask_digest(mask) != mask_digest(mask.transpose(Image.Transpose.FLIP_TOP_BOTTOM))


# -- found masks ------------------------------------------------------------------------------


def test_auto_finds_the_desk_and_replays_find_it_again(
    gen: DeskGenerator, tiny_segformer_path: Path, tmp_path: Path
) -> None:
    from deskgen.testing import make_desk_photo

    photo, expected = make_desk_photo(seed=7)
    settings = DeskMask(model=str(tiny_segformer_path), grow=2, blur=2)
    result = gen.generate(prompt="a tidy desk", image=photo, mask=settings, seed=3)
    assert result.mode == "inpaint" and result.mask is not None
    assert result.timings.mask > 0
    found = np.asarray(result.mask) >= 128
    desk = np.asarray(expected) == 255
    assert (found & desk).sum() / desk.sum() > 0.9  # the drawn desk is in the mask
    assert _outside_is_photo(result.image, photo, result.mask)
    desk_mask = result.request.desk_mask
    assert desk_mask is not None and desk_mask.model == str(tiny_segformer_path)
    assert result.request.mask_sha256 == mask_digest(result.mask)
    text = a1111_parameters(result, 0)
    assert "Mask blur: 2" in text and "Inpaint area: Whole picture" in text
    saved = result.save(tmp_path / "auto.png")[0]
    replay = read_record(saved)
    assert replay.desk_mask == desk_mask and replay.mask is None
    again = gen.generate(replay, image=photo)  # found again: no mask to pass
    assert again.request.mask_sha256 == result.request.mask_sha256
    assert not [w for w in again.warnings if "recorded with" in w]
    assert again.image.tobytes() == result.image.tobytes()


def test_auto_without_a_desk_says_what_it_looked_for(
    gen: DeskGenerator, tiny_segformer_path: Path
) -> None:
    wall = Image.new("RGB", (96, 64), (210, 205, 195))
    with pytest.raises(ImageInputError, match="desk"):
        gen.generate(
            prompt="a desk", image=wall, mask=DeskMask(model=str(tiny_segformer_path)), seed=1
        )
