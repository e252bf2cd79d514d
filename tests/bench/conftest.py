"""A bench over the tiny SDXL and SD pipelines, run once for the bench tests (in this process:
the isolated path has its own tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deskgen.bench import BenchConfig, BenchEntry, BenchReport, run_bench

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
