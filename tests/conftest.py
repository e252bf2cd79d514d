"""Shared fixtures: tiny random-weight pipelines built once per session, saved in the real
Hugging Face layout and loaded through deskgen's real loading path, fully offline."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw


@pytest.fixture(scope="session")
def tiny_sdxl_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deskgen.testing import make_tiny_pipeline

    return make_tiny_pipeline("sdxl", tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deskgen.testing import make_tiny_pipeline

    return make_tiny_pipeline("sd", tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_paths(tiny_sdxl_path: Path, tiny_sd_path: Path) -> dict[str, Path]:
    return {"sdxl": tiny_sdxl_path, "sd": tiny_sd_path}


@pytest.fixture(scope="session")
def tiny_control_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny ControlNets (two that fit the tiny SDXL, one for SD 1.x) and a tiny depth model."""
    from deskgen.testing import make_tiny_controlnet, make_tiny_depth_model

    root = tmp_path_factory.mktemp("control-models")
    return {
        "canny": make_tiny_controlnet(root / "controlnet-a", seed=1),
        "depth": make_tiny_controlnet(root / "controlnet-b", seed=2),
        "sd": make_tiny_controlnet(root / "controlnet-sd", base="sd"),
        "depth_model": make_tiny_depth_model(root / "depth"),
    }


@pytest.fixture(scope="session")
def tiny_hidream_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny HiDream pipeline and, apart as HiDream's is, its tiny Llama encoder."""
    from deskgen.testing import make_tiny_llama, make_tiny_pipeline

    root = tmp_path_factory.mktemp("hidream-models")
    return {
        "pipeline": make_tiny_pipeline("hidream", root / "tiny-hidream"),
        "llama": make_tiny_llama(root / "tiny-llama"),
    }


@pytest.fixture(scope="session")
def tiny_janus_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deskgen.testing import make_tiny_janus

    return make_tiny_janus(tmp_path_factory.mktemp("janus-models") / "tiny-janus")


@pytest.fixture(scope="session")
def generators(tiny_paths: dict[str, Path]) -> Iterator[dict[str, object]]:
    """One shared DeskGenerator per tiny backend, on the CPU (as a service would share it)."""
    from deskgen import DeskGenerator

    gens = {
        kind: DeskGenerator(kind, model=str(path), device="cpu")
        for kind, path in tiny_paths.items()
    }
    yield gens
    for gen in gens.values():
        gen.close()


def draw_desk(size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A small synthetic 'desk photo' with structure (not flat), made here."""
    img = Image.new("RGB", size, (200, 190, 170))
    d = ImageDraw.Draw(img)
    w, h = size
    d.rectangle([0, int(h * 0.6), w, h], fill=(120, 80, 40))
    d.rectangle([int(w * 0.3), int(h * 0.15), int(w * 0.7), int(h * 0.5)], fill=(20, 20, 30))
    d.ellipse([int(w * 0.8), int(h * 0.55), int(w * 0.9), int(h * 0.7)], fill=(240, 240, 240))
    return img


@pytest.fixture
def desk_photo() -> Image.Image:
    return draw_desk()


@pytest.fixture(scope="session")
def tiny_segformer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deskgen.testing._segmentation import make_tiny_segmenter

    return make_tiny_segmenter(tmp_path_factory.mktemp("segmenters") / "segformer")


@pytest.fixture(scope="session")
def tiny_mask2former_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deskgen.testing._segmentation import make_tiny_segmenter

    return make_tiny_segmenter(
        tmp_path_factory.mktemp("segmenters") / "mask2former", kind="mask2former"
    )


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``DESKGEN_CACHE`` for the tests that run the offline demo's masks: the tiny
    segmentation model trained on the sample photo is built once a session."""
    return tmp_path_factory.mktemp("demo-cache")
