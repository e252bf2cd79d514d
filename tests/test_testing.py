from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from deskgen.testing import clip_tokenizer_dir, make_tiny_pipeline


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.safetensors")):
        h.update(path.read_bytes())
    return h.hexdigest()


def test_layout_is_the_real_hugging_face_one(tiny_sdxl_path: Path) -> None:
    for name in (
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "text_encoder_2/model.safetensors",
        "tokenizer/tokenizer_config.json",
        "tokenizer_2/tokenizer.json",
        "scheduler/scheduler_config.json",
    ):
        assert (tiny_sdxl_path / name).is_file(), name
    assert not list(tiny_sdxl_path.rglob("*.bin"))


def test_same_seed_same_weights(tmp_path: Path) -> None:
    a = make_tiny_pipeline("sd", tmp_path / "a", seed=3)
    b = make_tiny_pipeline("sd", tmp_path / "b", seed=3)
    c = make_tiny_pipeline("sd", tmp_path / "c", seed=4)
    assert _digest(a) == _digest(b) != _digest(c)


def test_an_existing_build_is_reused(tmp_path: Path) -> None:
    path = make_tiny_pipeline("sd", tmp_path / "m")
    weights = path / "unet" / "diffusion_pytorch_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    make_tiny_pipeline("sd", tmp_path / "m")
    assert weights.stat().st_mtime_ns == stamp
    make_tiny_pipeline("sd", tmp_path / "m", overwrite=True)
    assert weights.stat().st_mtime_ns != stamp


def test_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Unknown tiny pipeline kind"):
        make_tiny_pipeline("flux", tmp_path)  # type: ignore[arg-type]


def test_real_clip_vocabulary_ships_with_its_license() -> None:
    from transformers import CLIPTokenizer

    folder = clip_tokenizer_dir()
    assert "MIT License" in (folder / "LICENSE").read_text()
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_tiny_controlnet_layout_and_live_zero_convs(tiny_control_paths: dict[str, Path]) -> None:
    from diffusers import ControlNetModel

    from deskgen.testing import make_tiny_controlnet

    folder = tiny_control_paths["canny"]
    assert (folder / "config.json").is_file()
    assert (folder / "diffusion_pytorch_model.safetensors").is_file()
    net = ControlNetModel.from_pretrained(folder, use_safetensors=True)
    # zero at the start of real training; random here, so the control reaches the UNet
    assert all(block.weight.abs().sum() > 0 for block in net.controlnet_down_blocks)
    assert net.controlnet_mid_block.weight.abs().sum() > 0
    before = _digest(folder)
    assert make_tiny_controlnet(folder, seed=1) == folder and _digest(folder) == before  # reused
    with pytest.raises(ValueError, match="base"):
        make_tiny_controlnet(folder.parent / "x", base="sd3")  # type: ignore[arg-type]


def test_tiny_depth_model_loads_through_the_auto_classes(
    tiny_control_paths: dict[str, Path],
) -> None:
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    folder = tiny_control_paths["depth_model"]
    model = AutoModelForDepthEstimation.from_pretrained(folder, use_safetensors=True)
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    assert type(model).__name__ == "DepthAnythingForDepthEstimation"
    with torch.no_grad():
        depth = model(**processor(images=Image.new("RGB", (40, 30), "grey"), return_tensors="pt"))
    assert depth.predicted_depth.ndim == 3
