"""Masked requests ("change only the desk, keep the room") on the instruction editors
``qwen-image-edit``, ``flux-kontext`` and ``flux2-klein``: diffusers'
``QwenImageEditInpaintPipeline``, ``FluxKontextInpaintPipeline`` and
``Flux2KleinInpaintPipeline`` over the loaded modules, on tiny random-weight models (offline).

Each backend: outside the mask the images are the photo's own pixels at its size; the raw output
(``keep_unmasked=False``) is the pixels of a hand-written call of the inpainting pipeline; the
strength left out is the pipeline's own; ``padding_mask_crop`` and reference images go through
as designed (or are refused, typed, where the pipeline can't take them).

Qwen-Image-Edit's inpainting pipeline always generates about 1024 x 1024 pixels (it ignores
width/height): its requests here cost some 30 s each on a CPU, so there are few of them.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

import deskgen
from deskgen import (
    BackendError,
    DeskGenerator,
    GenerationRequest,
    InvalidRequestError,
    UnsupportedOperationError,
)
from deskgen.backends.diffusers.flux2_klein import AREA
from deskgen.backends.diffusers.flux_kontext import kontext_size
from deskgen.backends.diffusers.qwen_image_edit import (
    edit_size,
    inpaint_size,
    processor_without_torchvision,
)
from deskgen.testing import make_tiny_pipeline
from deskgen.testing.contract import contract_mask

from ..conftest import draw_desk

SIZE: dict[str, Any] = {"width": 64, "height": 48}  # the photo's 4:3, small
PROMPT = "make the desk tidy, keep the window"
QWEN_SIZE = (1184, 896)  # what QwenImageEditInpaintPipeline generates for a 4:3 photo


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("editor-inpaint")
    return {
        kind: make_tiny_pipeline(kind, root / kind)
        for kind in ("qwen-image-edit-plus", "flux-kontext", "flux2-klein", "flux2-klein-base")
    }


@pytest.fixture(scope="module")
def qwen(paths: dict[str, Path]) -> Iterator[DeskGenerator]:
    model = str(paths["qwen-image-edit-plus"])
    with DeskGenerator("qwen-image-edit", model=model, device="cpu") as gen:
        yield gen


@pytest.fixture(scope="module")
def kontext(paths: dict[str, Path]) -> Iterator[DeskGenerator]:
    with DeskGenerator("flux-kontext", model=str(paths["flux-kontext"]), device="cpu") as gen:
        yield gen


@pytest.fixture(scope="module")
def klein(paths: dict[str, Path]) -> Iterator[DeskGenerator]:
    with DeskGenerator("flux2-klein", model=str(paths["flux2-klein"]), device="cpu") as gen:
        yield gen


@pytest.fixture(scope="module")
def klein_base(paths: dict[str, Path]) -> Iterator[DeskGenerator]:
    model = str(paths["flux2-klein-base"])
    with DeskGenerator("flux2-klein", model=model, device="cpu") as gen:
        yield gen


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return deskgen.load_image(draw_desk())[0]


@pytest.fixture(scope="module")
def mask(photo: Image.Image) -> Image.Image:
    """The desk and the monitor white, the rest black, a feathered edge."""
    return contract_mask(photo.size)


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """What the backends give the pipelines: centre-cropped to the output's aspect, Lanczos."""
    return ImageOps.fit(image, size, method=Image.Resampling.LANCZOS)


def _pipe(cls_name: str, path: Path) -> Any:
    import diffusers

    with processor_without_torchvision():
        pipe = getattr(diffusers, cls_name).from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _by_hand(pipe: Any, **call: Any) -> np.ndarray:
    """The first image of a hand-written call of ``pipe`` (seed 7), as uint8 pixels."""
    import torch

    output_type = call.pop("output_type", "np")
    generator = torch.Generator("cpu").manual_seed(7)
    with torch.no_grad():
        out = pipe(generator=generator, output_type=output_type, **call)
    image = out.images[0] if output_type == "pil" else pipe.numpy_to_pil(out.images)[0]
    return np.asarray(image)


def _default_strength(cls_name: str) -> float:
    import diffusers

    call = getattr(diffusers, cls_name).__call__
    return float(inspect.signature(call).parameters["strength"].default)


def _assert_room_kept(result: deskgen.GenerationResult, photo: Image.Image) -> None:
    """Outside the mask the photo's own pixels, byte for byte, at the photo's size."""
    assert result.mode == "inpaint"
    assert result.mask is not None and result.mask.size == photo.size
    keep = np.asarray(result.mask) == 0
    assert keep.any() and not keep.all()
    for image in result.images:
        assert image.size == photo.size
        assert np.array_equal(np.asarray(image)[keep], np.asarray(photo)[keep])


# -- qwen-image-edit ---------------------------------------------------------------------------


def test_qwen_inpaints_as_the_pipeline_does(
    qwen: DeskGenerator, paths: dict[str, Path], photo: Image.Image, mask: Image.Image
) -> None:
    fields: dict[str, Any] = {
        "prompt": PROMPT,
        "negative_prompt": "clutter",
        "image": photo,
        "mask": mask,
        "seed": 7,
        "steps": 2,
    }
    kept = qwen.generate(**fields)
    _assert_room_kept(kept, photo)
    assert np.array_equal(np.asarray(kept.mask), np.asarray(mask))
    assert kept.request.strength == _default_strength("QwenImageEditInpaintPipeline") == 0.6
    assert (kept.width, kept.height) == QWEN_SIZE
    assert kept.request.guidance_scale == 4.0 and not kept.warnings
    raw = qwen.generate(**fields, keep_unmasked=False)
    assert raw.images[0].size == QWEN_SIZE
    expected = _by_hand(
        _pipe("QwenImageEditInpaintPipeline", paths["qwen-image-edit-plus"]),
        image=_fit(photo, QWEN_SIZE),
        mask_image=_fit(mask, QWEN_SIZE),
        prompt=PROMPT,
        negative_prompt="clutter",
        true_cfg_scale=4.0,
        strength=0.6,
        num_inference_steps=2,
    )
    np.testing.assert_array_equal(np.asarray(raw.images[0]), expected)


def test_qwen_passes_padding_mask_crop_to_the_pipeline(
    qwen: DeskGenerator, photo: Image.Image, mask: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the pipeline is called with (the call itself stopped: a real one costs ~30 s;
    flux2-klein's test below runs one against diffusers)."""
    import diffusers

    cls = diffusers.QwenImageEditInpaintPipeline
    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    @functools.wraps(cls.__call__)
    def spy(self: Any, **call: Any) -> Any:
        seen.update(call)
        raise Stop

    monkeypatch.setattr(cls, "__call__", spy)
    with pytest.raises(BackendError, match="Stop"):
        qwen.generate(prompt=PROMPT, image=photo, mask=mask, padding_mask_crop=16, steps=2)
    assert seen["padding_mask_crop"] == 16 and seen["output_type"] == "pil"
    assert seen["image"].size == seen["mask_image"].size == QWEN_SIZE
    assert seen["strength"] == 0.6 and seen["prompt"] == PROMPT


def test_qwen_takes_no_references_with_a_mask(
    qwen: DeskGenerator, photo: Image.Image, mask: Image.Image
) -> None:
    with pytest.raises(UnsupportedOperationError, match="one reference image with a mask"):
        qwen.generate(
            prompt=PROMPT, image=photo, mask=mask, references=[draw_desk((64, 64))], steps=2
        )


def test_qwen_inpaints_at_the_size_its_pipeline_keeps(
    qwen: DeskGenerator, photo: Image.Image, mask: Image.Image
) -> None:
    for step in range(1, 400):
        aspect = math.exp(math.log(1 / 4) + math.log(16) * step / 400)
        width, height = inpaint_size(aspect)
        assert edit_size(width / height) == (width, height)  # the pipeline's size of it
    plan = qwen.backend._plan_size  # type: ignore[attr-defined]
    request = GenerationRequest(prompt=PROMPT, image=photo, mask=mask, **SIZE)
    width, height, warnings = plan(request, photo)
    assert (width, height) == QWEN_SIZE
    assert any("not 64x48" in w and "QwenImageEditInpaintPipeline" in w for w in warnings)
    replay = request.model_copy(update={"width": QWEN_SIZE[0], "height": QWEN_SIZE[1]})
    assert plan(replay, photo) == (*QWEN_SIZE, [])
    with pytest.raises(InvalidRequestError, match="no strength"):  # still, without a mask
        qwen.generate(prompt=PROMPT, image=photo, strength=0.5, steps=2, **SIZE)


# -- flux-kontext ------------------------------------------------------------------------------


def test_kontext_inpaints_as_the_pipeline_does(
    kontext: DeskGenerator, paths: dict[str, Path], photo: Image.Image, mask: Image.Image
) -> None:
    fields: dict[str, Any] = dict(
        prompt=PROMPT,
        negative_prompt="clutter",
        true_cfg_scale=2.0,
        guidance_scale=3.0,
        image=photo,
        mask=mask,
        seed=7,
        steps=2,
        **SIZE,
    )
    kept = kontext.generate(**fields)
    _assert_room_kept(kept, photo)
    assert kept.request.strength == _default_strength("FluxKontextInpaintPipeline") == 1.0
    raw = kontext.generate(**fields, keep_unmasked=False)
    assert raw.mode == "inpaint" and raw.images[0].size == (64, 48)
    expected = _by_hand(
        _pipe("FluxKontextInpaintPipeline", paths["flux-kontext"]),
        image=_fit(photo, (64, 48)),
        mask_image=_fit(mask, (64, 48)),
        prompt=PROMPT,
        negative_prompt="clutter",
        true_cfg_scale=2.0,
        guidance_scale=3.0,
        num_inference_steps=2,
        max_area=64 * 48,
        _auto_resize=False,
        **SIZE,
    )
    np.testing.assert_array_equal(np.asarray(raw.images[0]), expected)


def test_kontext_takes_one_reference_with_a_mask(
    kontext: DeskGenerator, paths: dict[str, Path], photo: Image.Image, mask: Image.Image
) -> None:
    ref = draw_desk((80, 64))
    raw = kontext.generate(
        prompt="put the lamp from the reference on the desk",
        image=photo,
        mask=mask,
        references=[ref],
        strength=0.75,
        keep_unmasked=False,
        seed=7,
        steps=2,
        **SIZE,
    )
    assert raw.request.strength == 0.75
    assert raw.request.reference_sha256 == [deskgen.load_image(ref)[1].sha256]
    backend: Any = kontext.backend
    ref_size = kontext_size(80 / 64, native=backend.native_size, multiple=backend._size_multiple())
    assert ref_size == (276, 236)  # the tiny model's Kontext resolution nearest 5:4, on 4 px
    expected = _by_hand(
        _pipe("FluxKontextInpaintPipeline", paths["flux-kontext"]),
        image=_fit(photo, (64, 48)),
        mask_image=_fit(mask, (64, 48)),
        image_reference=_fit(ref, ref_size),
        prompt="put the lamp from the reference on the desk",
        guidance_scale=2.5,
        strength=0.75,
        num_inference_steps=2,
        max_area=64 * 48,
        _auto_resize=False,
        **SIZE,
    )
    np.testing.assert_array_equal(np.asarray(raw.images[0]), expected)


def test_kontext_refuses_what_its_inpainting_pipeline_cant_do(
    kontext: DeskGenerator, photo: Image.Image, mask: Image.Image
) -> None:
    ref = draw_desk((64, 64))
    with pytest.raises(UnsupportedOperationError, match="only with a mask"):
        kontext.generate(prompt=PROMPT, image=photo, references=[ref], steps=2, **SIZE)
    with pytest.raises(InvalidRequestError, match="at most 1"):
        kontext.generate(prompt=PROMPT, image=photo, mask=mask, references=[ref, ref], steps=2)
    with pytest.raises(UnsupportedOperationError, match="never pasted back"):
        kontext.generate(prompt=PROMPT, image=photo, mask=mask, padding_mask_crop=8, steps=2)
    with pytest.raises(InvalidRequestError, match="no strength"):  # still, without a mask
        kontext.generate(prompt=PROMPT, image=photo, strength=0.5, steps=2, **SIZE)


# -- flux2-klein -------------------------------------------------------------------------------


def test_klein_inpaints_as_the_pipeline_does(
    klein: DeskGenerator, paths: dict[str, Path], photo: Image.Image, mask: Image.Image
) -> None:
    fields: dict[str, Any] = dict(prompt=PROMPT, image=photo, mask=mask, seed=7, steps=2, **SIZE)
    kept = klein.generate(**fields)
    _assert_room_kept(kept, photo)
    assert kept.request.strength == _default_strength("Flux2KleinInpaintPipeline") == 0.8
    raw = klein.generate(**fields, keep_unmasked=False)
    assert raw.mode == "inpaint" and raw.images[0].size == (64, 48)
    pipe = _pipe("Flux2KleinInpaintPipeline", paths["flux2-klein"])
    call: dict[str, Any] = dict(
        image=_fit(photo, (64, 48)),
        mask_image=_fit(mask, (64, 48)),
        prompt=PROMPT,
        guidance_scale=1.0,
        num_inference_steps=2,
        **SIZE,
    )
    np.testing.assert_array_equal(np.asarray(raw.images[0]), _by_hand(pipe, **call))
    # only the box around the mask redrawn, pasted back by the pipeline (PIL output)
    cropped = klein.generate(**fields, keep_unmasked=False, padding_mask_crop=8)
    assert cropped.request.padding_mask_crop == 8
    expected = _by_hand(pipe, **call, padding_mask_crop=8, output_type="pil")
    np.testing.assert_array_equal(np.asarray(cropped.images[0]), expected)
    assert not np.array_equal(expected, np.asarray(raw.images[0]))


def test_klein_base_inpaints_after_one_reference_with_a_negative_prompt(
    klein_base: DeskGenerator, paths: dict[str, Path], photo: Image.Image, mask: Image.Image
) -> None:
    import torch

    ref = draw_desk((64, 80))
    prompt = "put the lamp from the second image on the desk"
    raw = klein_base.generate(
        prompt=prompt,
        negative_prompt="clutter",
        image=photo,
        mask=mask,
        references=[ref],
        strength=0.9,
        keep_unmasked=False,
        seed=7,
        steps=2,
        **SIZE,
    )
    assert raw.mode == "inpaint" and raw.request.guidance_scale == 4.0
    pipe = _pipe("Flux2KleinInpaintPipeline", paths["flux2-klein-base"])
    with torch.no_grad():
        positive, _ = pipe.encode_prompt(prompt)
        negative, _ = pipe.encode_prompt("clutter")
    expected = _by_hand(
        pipe,
        image=_fit(photo, (64, 48)),
        mask_image=_fit(mask, (64, 48)),
        image_reference=ref,
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        guidance_scale=4.0,
        strength=0.9,
        num_inference_steps=2,
        **SIZE,
    )
    np.testing.assert_array_equal(np.asarray(raw.images[0]), expected)


def test_klein_takes_one_reference_and_its_pipelines_area_with_a_mask(
    klein: DeskGenerator, photo: Image.Image, mask: Image.Image
) -> None:
    ref = draw_desk((64, 64))
    with pytest.raises(UnsupportedOperationError, match="one reference image with a mask"):
        klein.generate(prompt=PROMPT, image=photo, mask=mask, references=[ref, ref], steps=2)
    plan = klein.backend._plan_size  # type: ignore[attr-defined]
    big = GenerationRequest(prompt=PROMPT, image=photo, mask=mask, width=2048, height=1536)
    width, height, warnings = plan(big, photo)
    assert width * height <= AREA and (width, height) == (1168, 880)
    assert any("not 2048x1536" in w for w in warnings)
    unmasked = big.model_copy(update={"mask": None})
    assert plan(unmasked, photo)[:2] == (2048, 1536)  # edits keep the size they are given
    with pytest.raises(InvalidRequestError, match="no strength"):  # still, without a mask
        klein.generate(prompt=PROMPT, image=photo, strength=0.5, steps=2, **SIZE)
