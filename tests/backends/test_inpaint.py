"""Inpainting on ``sd``, ``sdxl`` and ``sdxl-controlnet`` (only the masked desk redrawn, the
room kept), on tiny random-weight pipelines, offline: the room's pixels come back as they were,
and the raw outputs are what a hand-written diffusers inpainting call gives."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from deskgen import (
    DeskGenerator,
    GenerationResult,
    ImageInputError,
    ModelMismatchError,
    UnsupportedOperationError,
)

KINDS = ["sd", "sdxl", "sdxl-controlnet"]
INPAINT_CLASSES = {
    "sd": "StableDiffusionInpaintPipeline",
    "sdxl": "StableDiffusionXLInpaintPipeline",
    "sdxl-controlnet": "StableDiffusionXLControlNetInpaintPipeline",
}
GUIDANCE = {"sd": 7.5, "sdxl": 5.0, "sdxl-controlnet": 5.0}
STRENGTH = {"sd": 1.0, "sdxl": 0.9999, "sdxl-controlnet": 0.9999}
"""The inpainting pipelines' own strength defaults, which deskgen keeps."""


def _photo(size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A flat wall with a drawn desk and monitor."""
    w, h = size
    photo = Image.new("RGB", size, (200, 180, 150))
    draw = ImageDraw.Draw(photo)
    draw.rectangle([0, int(h * 0.6), w, h], fill=(120, 80, 40))
    draw.rectangle([int(w * 0.3), int(h * 0.2), int(w * 0.7), int(h * 0.55)], fill=(20, 20, 30))
    return photo


def _mask(size: tuple[int, int] = (64, 64)) -> Image.Image:
    """White (change) over the middle of the desk, black (keep) elsewhere."""
    w, h = size
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(
        [int(w * 0.3), int(h * 0.45), int(w * 0.7), int(h * 0.85)], fill=255
    )
    return mask


def _pixels(img: Image.Image) -> np.ndarray[Any, np.dtype[np.int16]]:
    return np.asarray(img).astype(np.int16)


@pytest.fixture(scope="module")
def controlnet_gen(tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path]) -> Any:
    gen = DeskGenerator(
        "sdxl-controlnet",
        model=str(tiny_sdxl_path),
        controlnet=str(tiny_control_paths["canny"]),
        control="canny",
        device="cpu",
    )
    yield gen
    gen.close()


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def gen(kind: str, generators: dict[str, DeskGenerator], controlnet_gen: DeskGenerator) -> Any:
    return controlnet_gen if kind == "sdxl-controlnet" else generators[kind]


@pytest.fixture(scope="module")
def inpainting_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny inpainting checkpoints: 9-channel UNets saved as the inpainting pipelines."""
    from deskgen.testing import make_tiny_pipeline

    root = tmp_path_factory.mktemp("inpainting-models")
    return {
        "sd": make_tiny_pipeline("sd-inpaint", root / "sd-inpaint"),
        "sdxl": make_tiny_pipeline("sdxl-inpaint", root / "sdxl-inpaint"),
    }


@pytest.fixture(scope="module")
def hand_written(
    tiny_sd_path: Path, tiny_sdxl_path: Path, tiny_control_paths: dict[str, Path]
) -> Any:
    """The hand-written diffusers inpainting pipeline of each kind over the tiny base model,
    loaded once per module."""
    pipes: dict[str, Any] = {}

    def get(kind: str) -> Any:
        if kind not in pipes:
            model = tiny_sd_path if kind == "sd" else tiny_sdxl_path
            pipes[kind] = _hand_written(kind, model, tiny_control_paths)
        return pipes[kind]

    return get


def _hand_written(kind: str, model: Path, control_paths: dict[str, Path] | None = None) -> Any:
    """The diffusers inpainting pipeline of ``kind`` over ``model``'s files, as a user would
    write it."""
    import diffusers

    extra: dict[str, Any] = {}
    if kind == "sdxl-controlnet":
        assert control_paths is not None
        extra["controlnet"] = diffusers.ControlNetModel.from_pretrained(
            control_paths["canny"], use_safetensors=True
        )
    cls = getattr(diffusers, INPAINT_CLASSES[kind])
    pipe = cls.from_pretrained(model, use_safetensors=True, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _reference(kind: str, pipe: Any, result: GenerationResult, **call: Any) -> Image.Image:
    """``pipe`` called as deskgen should have called it for ``result`` (seed 3, two steps)."""
    if kind == "sdxl-controlnet":
        call.update(
            control_image=result.control_images[0],
            controlnet_conditioning_scale=0.5,  # the canny control's default scale
        )
    assert result.mask is not None
    image: Image.Image = pipe(
        "a tidy desk",
        image=_photo(),
        mask_image=result.mask,
        width=64,
        height=64,
        num_inference_steps=2,
        guidance_scale=GUIDANCE[kind],
        generator=torch.Generator("cpu").manual_seed(3),
        **call,
    ).images[0]
    return image


class TestMaskedRequests:
    def test_the_room_keeps_its_pixels(self, gen: DeskGenerator) -> None:
        photo, mask = _photo(), _mask()
        result = gen.generate(prompt="a tidy desk", image=photo, mask=mask, seed=3, steps=2)
        assert result.mode == "inpaint" and result.request.mode == "inpaint"
        assert result.mask is not None and result.mask.size == photo.size
        assert np.array_equal(np.asarray(result.mask), np.asarray(mask))
        assert result.photo is not None and result.request.mask_sha256 is not None
        [image] = result.images
        assert image.size == photo.size and image.mode == "RGB"
        keep = np.asarray(mask) == 0
        assert np.array_equal(np.asarray(image)[keep], np.asarray(photo)[keep])
        # the masked part was redrawn
        assert not np.array_equal(np.asarray(image)[~keep], np.asarray(photo)[~keep])

    def test_strength_default_is_the_pipelines(self, kind: str, gen: DeskGenerator) -> None:
        result = gen.generate(prompt="a tidy desk", image=_photo(), mask=_mask(), seed=3, steps=4)
        assert result.request.strength == STRENGTH[kind]
        # int(4 * 0.9999) = 3 steps for SDXL's; SD's PNDM repeats one timestep (PLMS)
        assert result.denoising_steps == (3 if kind != "sd" else 5)
        explicit = gen.generate(
            prompt="a tidy desk", image=_photo(), mask=_mask(), seed=3, steps=4, strength=0.5
        )
        assert explicit.request.strength == 0.5
        assert explicit.denoising_steps == (2 if kind != "sd" else 3)
        assert explicit.image.tobytes() != result.image.tobytes()

    def test_oblong_photo_comes_back_at_its_size(self, kind: str, gen: DeskGenerator) -> None:
        photo, mask = _photo((96, 72)), _mask((96, 72))
        result = gen.generate(prompt="a desk", image=photo, mask=mask, seed=1, steps=2)
        assert (result.width, result.height) == (64, 48)  # generated at the native area
        assert result.image.size == (96, 72)
        keep = np.asarray(mask) == 0
        assert np.array_equal(np.asarray(result.image)[keep], np.asarray(photo)[keep])
        raw = gen.generate(
            prompt="a desk", image=photo, mask=mask, seed=1, steps=2, keep_unmasked=False
        )
        assert raw.image.size == (64, 48)

    def test_controlnet_controls_come_from_the_whole_photo(
        self, controlnet_gen: DeskGenerator
    ) -> None:
        result = controlnet_gen.generate(
            prompt="a desk", image=_photo(), mask=_mask(), seed=1, steps=2
        )
        [edges] = result.control_images
        assert edges.size == (64, 64) and np.asarray(edges).any()
        assert [c.kind for c in result.controls] == ["canny"]
        assert result.request.control_scale == [0.5]


class TestParity:
    """Masked requests add no hidden change: the raw output (``keep_unmasked=False``) is the
    hand-written diffusers inpainting call's, pixel for pixel."""

    def test_matches_the_diffusers_inpainting_pipeline(
        self, kind: str, gen: DeskGenerator, hand_written: Any
    ) -> None:
        result = gen.generate(
            prompt="a tidy desk",
            image=_photo(),
            mask=_mask(),
            seed=3,
            steps=2,
            keep_unmasked=False,
        )
        assert result.image.size == (64, 64)
        pipe = hand_written(kind)
        assert type(gen.backend).inpaint_class == type(pipe).__name__
        ref = _reference(kind, pipe, result, strength=STRENGTH[kind])
        assert np.array_equal(_pixels(ref), _pixels(result.image))
        # what keep_unmasked adds is the photo outside the mask, nothing else
        kept = gen.generate(prompt="a tidy desk", image=_photo(), mask=_mask(), seed=3, steps=2)
        inside = np.asarray(_mask()) == 255
        assert np.array_equal(np.asarray(kept.image)[inside], np.asarray(ref)[inside])

    def test_padding_mask_crop_reaches_the_pipeline(
        self, kind: str, gen: DeskGenerator, hand_written: Any
    ) -> None:
        fields: dict[str, Any] = {
            "prompt": "a tidy desk",
            "image": _photo(),
            "mask": _mask(),
            "seed": 3,
            "steps": 2,
            "keep_unmasked": False,
        }
        cropped = gen.generate(**fields, padding_mask_crop=8)
        assert cropped.request.padding_mask_crop == 8
        whole = gen.generate(**fields)
        assert cropped.image.tobytes() != whole.image.tobytes()
        ref = _reference(
            kind, hand_written(kind), cropped, strength=STRENGTH[kind], padding_mask_crop=8
        )
        assert np.array_equal(_pixels(ref), _pixels(cropped.image))
        # diffusers pastes the box back over the photo: outside the box the photo is kept
        assert cropped.image.getpixel((0, 0)) == _photo().getpixel((0, 0))


class TestInpaintingCheckpoints:
    @pytest.mark.parametrize("kind", ["sd", "sdxl"])
    def test_loads_inpaints_and_refuses_unmasked_requests(
        self, kind: str, inpainting_paths: dict[str, Path]
    ) -> None:
        path = inpainting_paths[kind]
        with DeskGenerator(kind, model=str(path), device="cpu") as gen:
            backend: Any = gen.backend
            assert type(gen.backend.pipeline).__name__ == INPAINT_CLASSES[kind]
            assert backend.inpainting_only and backend._img2img is None
            assert backend.pipeline.unet.config.in_channels == 9
            result = gen.generate(
                prompt="a tidy desk", image=_photo(), mask=_mask(), seed=3, steps=2
            )
            assert result.mode == "inpaint" and result.request.strength == STRENGTH[kind]
            keep = np.asarray(_mask()) == 0
            assert np.array_equal(np.asarray(result.image)[keep], np.asarray(_photo())[keep])
            raw = gen.generate(
                prompt="a tidy desk",
                image=_photo(),
                mask=_mask(),
                seed=3,
                steps=2,
                keep_unmasked=False,
            )
            ref = _reference(kind, _hand_written(kind, path), raw)
            assert np.array_equal(_pixels(ref), _pixels(raw.image))
            with pytest.raises(UnsupportedOperationError, match="inpainting checkpoint"):
                gen.generate(prompt="a desk", seed=1, steps=2)
            with pytest.raises(UnsupportedOperationError, match="mask="):
                gen.generate(prompt="a desk", image=_photo(), seed=1, steps=2)

    def test_controlnets_dont_fit_inpainting_unets(
        self,
        inpainting_paths: dict[str, Path],
        tiny_control_paths: dict[str, Path],
        tmp_path: Path,
    ) -> None:
        net = str(tiny_control_paths["canny"])
        with pytest.raises(ModelMismatchError, match="'sdxl'"):  # by its model_index
            DeskGenerator("sdxl-controlnet", model=str(inpainting_paths["sdxl"]), controlnet=net)
        relabelled = tmp_path / "relabelled"
        shutil.copytree(inpainting_paths["sdxl"], relabelled)
        index = json.loads((relabelled / "model_index.json").read_text())
        index["_class_name"] = "StableDiffusionXLPipeline"
        (relabelled / "model_index.json").write_text(json.dumps(index))
        with pytest.raises(ModelMismatchError, match="inpainting checkpoint"):  # by its UNet
            DeskGenerator("sdxl-controlnet", model=str(relabelled), controlnet=net)

    def test_a_base_unet_saved_as_inpainting_pipeline_does_everything(
        self, tiny_sd_path: Path, tmp_path: Path
    ) -> None:
        folder = tmp_path / "saved-as-inpaint"
        shutil.copytree(tiny_sd_path, folder)
        index = json.loads((folder / "model_index.json").read_text())
        index["_class_name"] = "StableDiffusionInpaintPipeline"
        (folder / "model_index.json").write_text(json.dumps(index))
        with DeskGenerator("sd", model=str(folder), device="cpu") as gen:
            assert type(gen.backend.pipeline).__name__ == "StableDiffusionPipeline"
            assert gen.generate(prompt="a desk", seed=1, steps=2).mode == "txt2img"
            masked = gen.generate(prompt="a desk", image=_photo(), mask=_mask(), seed=1, steps=2)
            assert masked.mode == "inpaint"


class TestBadMasks:
    def test_masks_that_mark_nothing_or_another_photo_are_refused(
        self, generators: dict[str, DeskGenerator]
    ) -> None:
        gen = generators["sd"]
        photo = _photo()
        with pytest.raises(ImageInputError, match="all black"):
            gen.generate(prompt="a desk", image=photo, mask=Image.new("L", (64, 64), 0))
        with pytest.raises(ImageInputError, match="all white"):
            gen.generate(prompt="a desk", image=photo, mask=Image.new("L", (64, 64), 255))
        with pytest.raises(ImageInputError, match="another shape"):
            gen.generate(prompt="a desk", image=photo, mask=_mask((64, 32)))

    def test_a_mask_of_the_same_aspect_is_resized_to_the_photo(
        self, generators: dict[str, DeskGenerator]
    ) -> None:
        result = generators["sd"].generate(
            prompt="a desk", image=_photo(), mask=_mask((128, 128)), seed=2, steps=2
        )
        assert result.mask is not None and result.mask.size == (64, 64)
