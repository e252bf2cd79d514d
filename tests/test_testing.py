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
