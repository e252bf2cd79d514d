"""A bench over the tiny SDXL and SD pipelines, run once for the bench tests (in this process:
the isolated path has its own tests)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFilter

from deskgen.backends._profile import BackendProfile
from deskgen.bench import BenchConfig, BenchEntry, BenchReport, run_bench
from deskgen.testing import FakeBackend

from ..conftest import draw_desk

PROMPT = "a tidy desk with a lamp and a plant"


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deskgen.testing import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", seed=5)


@pytest.fixture(scope="session")
def bench_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "desk.png"
    draw_desk().save(path)
    return path


@pytest.fixture(scope="session")
def bench_config(tiny_paths: dict[str, Path], bench_photo: Path, tiny_clip: Path) -> BenchConfig:
    return BenchConfig(
        prompt=PROMPT,
        image=str(bench_photo),
        request={"steps": 4},
        warmup=1,
        repeats=3,
        device="cpu",
        clip_model=str(tiny_clip),
        isolate=False,
        runs=[
            BenchEntry(backend="sdxl", model=str(tiny_paths["sdxl"]), label="SDXL <tiny>"),
            BenchEntry(backend="sd", model=str(tiny_paths["sd"]), options={"preset": "balanced"}),
        ],
    )


@pytest.fixture(scope="session")
def bench_run(
    bench_config: BenchConfig, tmp_path_factory: pytest.TempPathFactory
) -> tuple[BenchReport, Path, list[str]]:
    """The report, its folder, and the labels of the generate calls made (in order)."""
    from deskgen import DeskGenerator

    out = tmp_path_factory.mktemp("bench")
    calls: list[str] = []
    original = DeskGenerator.generate

    def counting(self: DeskGenerator, *args: object, **kwargs: object) -> object:
        calls.append(self.backend_name)
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    patch = pytest.MonkeyPatch()
    patch.setattr(DeskGenerator, "generate", counting)
    try:
        report = run_bench(bench_config, out=out)
    finally:
        patch.undo()
    return report, out, calls


# -- masked benches (issue 18) ---------------------------------------------------------------


def draw_mask(size: tuple[int, int] = (96, 72)) -> Image.Image:
    """White over the lower part of `draw_desk`'s photo (the desk, the monitor's foot, the
    white cup), feathered: grey at the edge."""
    width, height = size
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle([6, int(height * 0.45), width - 7, height], fill=255)
    return mask.filter(ImageFilter.BoxBlur(2))


class _NoMasks(FakeBackend):
    """The fake backend without masks in its profile."""

    profile = BackendProfile(modes=("txt2img", "img2img"))


@pytest.fixture(scope="session")
def backends() -> Iterator[None]:
    """``bench-fake`` (`FakeBackend`, which takes masks) and ``bench-fake-no-masks``, registered
    for the bench tests (names of their own: other tests' ``fake`` stays theirs)."""
    import deskgen._registry as registry
    from deskgen import register_backend

    registry._load_builtins()
    fake = type("FakeBackend", (FakeBackend,), {"__qualname__": "FakeBackend"})
    with pytest.MonkeyPatch.context() as patch:
        for name, cls in (("bench-fake", fake), ("bench-fake-no-masks", _NoMasks)):
            patch.setitem(registry._REGISTRY, name, cls)  # undone after the session
            register_backend(name, replace=True)(cls)
        yield


@pytest.fixture(scope="session")
def mask_path(bench_photo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mask") / "desk-mask.png"
    with Image.open(bench_photo) as photo:
        draw_mask(photo.size).save(path)
    return path


@pytest.fixture(scope="session")
def masked_run(
    backends: None, bench_photo: Path, mask_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[BenchReport, Path]:
    from deskgen.testing import FakeOpenAIServer

    out = tmp_path_factory.mktemp("masked")
    size = {"width": 96, "height": 72}
    with FakeOpenAIServer(scale=1) as server:
        config = BenchConfig(
            prompt="a tidy desk",
            image=str(bench_photo),
            mask=str(mask_path),
            warmup=0,
            repeats=1,
            isolate=False,
            device="cpu",
            runs=[
                BenchEntry(backend="bench-fake", label="fake masked", request=size),
                BenchEntry(
                    backend="openai",
                    model="gpt-image-1",
                    options={"api_key": "sk-test-0123456789", "base_url": server.base_url},
                ),
                BenchEntry(backend="bench-fake-no-masks", label="no masks"),
                BenchEntry(backend="bench-fake", label="whole", use_mask=False, request=size),
            ],
        )
        report = run_bench(config, out=out)
        assert len(server.received) == 1  # the refused run never ran
    return report, out
