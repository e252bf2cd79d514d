"""The tiny Qwen-Image-Edit pipelines of `deskgen.testing`: real layout, offline loading, a
working edit call (one photo; Plus: photo and reference), seeded weights, a chat for describe."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from deskgen.testing._qwen_image import (
    make_tiny_qwen_image_edit,
    qwen_processor_without_torchvision,
)

FOLDERS = ("scheduler", "text_encoder", "tokenizer", "processor", "transformer", "vae")


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    root = tmp_path_factory.mktemp("qwen-models")
    return {
        plus: make_tiny_qwen_image_edit(root / ("plus" if plus else "edit"), plus=plus)
        for plus in (False, True)
    }


@pytest.fixture
def loud_logs() -> Iterator[None]:
    """diffusers' and transformers' warnings on (conftest sets them to errors only)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    loggers: list[Any] = [diffusers_logging, transformers_logging]
    levels = [logger.get_verbosity() for logger in loggers]
    for logger in loggers:
        logger.set_verbosity_warning()
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.set_verbosity(level)


def _load(path: Path, plus: bool) -> Any:
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline

    cls: Any = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    with qwen_processor_without_torchvision():
        pipe = cls.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _photo() -> Image.Image:
    return Image.new("RGB", (64, 48), (140, 100, 70))


def _call(pipe: Any, image: Any, **kwargs: Any) -> Any:
    import torch

    return pipe(
        image=image,
        prompt="make the desk tidy",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="pil",
        **kwargs,
    ).images


@pytest.mark.parametrize("plus", [False, True], ids=["edit", "plus"])
def test_real_layout_loads_offline_without_missing_weights(
    tiny_qwen: dict[bool, Path], plus: bool, loud_logs: None, capfd: pytest.CaptureFixture[str]
) -> None:
    path = tiny_qwen[plus]
    index = json.loads((path / "model_index.json").read_text())
    expected = "QwenImageEditPlusPipeline" if plus else "QwenImageEditPipeline"
    assert index["_class_name"] == expected
    assert index["tokenizer"] == ["transformers", "Qwen2Tokenizer"]
    assert index["processor"] == ["transformers", "Qwen2VLProcessor"]
    assert index["text_encoder"] == ["transformers", "Qwen2_5_VLForConditionalGeneration"]
    for folder in FOLDERS:
        assert (path / folder).is_dir(), folder
    assert (path / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert (path / "text_encoder" / "model.safetensors").is_file()
    assert not list(path.rglob("*.bin"))
    capfd.readouterr()
    pipe = _load(path, plus)
    said = "".join(capfd.readouterr()).lower()
    for word in ("missing", "not initialized", "newly initialized", "unexpected", "mismatch"):
        assert word not in said, said
    assert pipe.text_encoder.config.text_config.hidden_size == (
        pipe.transformer.config.joint_attention_dim
    )
    vision = pipe.text_encoder.config.vision_config
    images = pipe.processor.image_processor
    assert (vision.patch_size, vision.spatial_merge_size) == (images.patch_size, images.merge_size)


def test_system_prompt_is_the_dropped_64_tokens(tiny_qwen: dict[bool, Path]) -> None:
    for plus in (False, True):
        pipe = _load(tiny_qwen[plus], plus)
        template = pipe.prompt_template_encode
        system = template[: template.index("user\n") + len("user\n")]
        ids = pipe.tokenizer(system)["input_ids"]
        assert len(ids) == pipe.prompt_template_encode_start_idx == 64


def test_edit_call_one_photo(tiny_qwen: dict[bool, Path]) -> None:
    pipe = _load(tiny_qwen[False], plus=False)
    images = _call(pipe, _photo(), negative_prompt=" ", true_cfg_scale=1.0)
    assert [image.size for image in images] == [(64, 64)]


def test_plus_call_photo_and_reference_with_guidance(tiny_qwen: dict[bool, Path]) -> None:
    pipe = _load(tiny_qwen[True], plus=True)
    reference = Image.new("RGB", (40, 40), (30, 160, 90))
    images = _call(pipe, [_photo(), reference], negative_prompt="blurry", true_cfg_scale=4.0)
    assert [image.size for image in images] == [(64, 64)]


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = make_tiny_qwen_image_edit(tmp_path / "a", seed=3)
    b = make_tiny_qwen_image_edit(tmp_path / "b", seed=3)
    c = make_tiny_qwen_image_edit(tmp_path / "c", seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*.safetensors"))
    assert len(files) == 3  # text encoder, transformer, VAE
    for name in [*files, Path("tokenizer/tokenizer.json")]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    weights = Path("transformer/diffusion_pytorch_model.safetensors")
    assert (a / weights).read_bytes() != (c / weights).read_bytes()
    before = (a / weights).stat().st_mtime_ns
    assert make_tiny_qwen_image_edit(tmp_path / "a", seed=3) == a  # reused, not rebuilt
    assert (a / weights).stat().st_mtime_ns == before


def test_chat_template_and_generate_for_describe(tiny_qwen: dict[bool, Path]) -> None:
    pipe = _load(tiny_qwen[False], plus=False)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": _photo()},
                {"type": "text", "text": "Describe this desk."},
            ],
        }
    ]
    inputs = pipe.processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert "pixel_values" in inputs and "image_grid_thw" in inputs
    out = pipe.text_encoder.generate(**inputs, max_new_tokens=4, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1] :]
    assert 1 <= new.shape[1] <= 4
    text = pipe.processor.batch_decode(new, skip_special_tokens=True)[0]
    assert isinstance(text, str)
