"""``generate_dataset(engine="ray")`` on a small local Ray cluster: the same folder as the local
engine (tiny SDXL in the real Hugging Face layout, each worker loading it itself), resumes in
either direction, failures recorded, fatal errors raised; and Ray only imported when used."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops

from deskgen import (
    AuthenticationError,
    DatasetPlan,
    DeskGenerator,
    LoraSpec,
    MissingDependencyError,
    ModelNotFoundError,
    generate_dataset,
)
from deskgen._dataset import RayOptions, generator_key, read_metadata

from .fakes import FakeBackend  # noqa: F401  (registers "fake")

PLAN = DatasetPlan(
    prompts=["a walnut desk", "a glass desk with a lamp"],
    images_per_prompt=3,
    seed=3,
    request={"steps": 2},
    caption_prefix="dskgn",
)
TWO = RayOptions(actors=2, num_gpus=0)
VOLATILE = {"timings", "created_at", "peak_memory"}
"""Record fields that differ between two runs of the same request."""


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread here, as in each Ray worker (given one CPU): the same sums in the
    same order, so the same pixels (another thread count may change a pixel by one)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _rows(out: Path) -> dict[str, dict[str, Any]]:
    """metadata rows by file name, the record without what differs between runs."""
    rows = {}
    for row in read_metadata(out):
        record = {k: v for k, v in json.loads(row["record"]).items() if k not in VOLATILE}
        rows[row["file_name"]] = row | {"record": record}
    return rows


def _all_cpus_free(ray: Any) -> bool:
    """Whether the run's actors are gone (Ray frees their CPUs a moment after)."""
    for _ in range(100):
        if ray.available_resources().get("CPU") == 2:
            return True
        time.sleep(0.1)
    return False


def _same_pixels(a: Path, b: Path) -> bool:
    with Image.open(a) as first, Image.open(b) as second:
        return ImageChops.difference(first.convert("RGB"), second.convert("RGB")).getbbox() is None


@pytest.mark.slow
def test_ray_makes_the_local_folder_and_resumes_either_way(
    tmp_path: Path, tiny_sdxl_path: Path, ray_cluster: Any, one_thread: None
) -> None:
    local, distributed = tmp_path / "local", tmp_path / "ray"
    seen: list[tuple[str, Exception | None]] = []

    def stop_after_three(item: Any, error: Exception | None) -> None:
        seen.append((item.key, error))
        if len(seen) == 3:
            raise KeyboardInterrupt

    with DeskGenerator("sdxl", model=str(tiny_sdxl_path), device="cpu") as gen:
        assert generate_dataset(gen, PLAN, local, progress=False).generated == 6
        # a local run of a smaller plan; Ray makes the rest but is stopped after three
        smaller = PLAN.model_copy(update={"images_per_prompt": 1})
        assert generate_dataset(gen, smaller, distributed, progress=False).generated == 2
        with pytest.raises(KeyboardInterrupt):
            generate_dataset(
                gen, PLAN, distributed, on_item=stop_after_three, engine="ray", ray=TWO
            )
        assert [error for _, error in seen] == [None] * 3
        assert len(read_metadata(distributed)) == 5
        assert _all_cpus_free(ray_cluster)  # stopping the run stopped its actors
        # and the local engine finishes what Ray left
        report = generate_dataset(gen, PLAN, distributed, progress=False)
        assert (report.skipped, report.generated, report.complete) == (5, 1, True)

    local_rows, ray_rows = _rows(local), _rows(distributed)
    assert local_rows == ray_rows  # the same images (by key) with the same lines
    for name in local_rows:
        assert _same_pixels(local / "train" / name, distributed / "train" / name)
    assert sorted(p.name for p in (distributed / "train").iterdir()) == sorted(
        p.name for p in (local / "train").iterdir()
    )
    assert not list(distributed.rglob("*.tmp"))
    runs = json.loads((distributed / "dataset.json").read_text())["runs"]
    assert [run["dtype"] for run in runs] == ["float32"] * 3
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset("imagefolder", data_dir=str(distributed), split="train")
    assert sorted(loaded["caption"]) == sorted(r["caption"] for r in ray_rows.values())


@pytest.mark.slow
def test_ray_failures_are_recorded_and_fatal_errors_stop(tmp_path: Path, ray_cluster: Any) -> None:
    """The openai backend against the fake service (reached from the workers over HTTP): a
    refused prompt lands in failures.jsonl; a refused key stops the run with its error."""
    pytest.importorskip("openai")
    from deskgen.testing import FakeAnswer, FakeOpenAIServer

    out = tmp_path / "data"
    plan = DatasetPlan(prompts=["a walnut desk", "a glass desk"], images_per_prompt=2)
    with FakeOpenAIServer() as server:
        blocked = {"error": {"message": "blocked", "code": "moderation_blocked"}}
        server.answers.append(FakeAnswer(400, blocked))  # whichever item asks first
        with DeskGenerator(
            "openai", model="gpt-image-1", api_key="sk-test", base_url=server.base_url
        ) as gen:
            report = generate_dataset(gen, plan, out, progress=False, engine="ray", ray=TWO)
            assert report.generated == 3
            [failure] = report.failures
            assert (failure.error, failure.message) == ("ContentPolicyError", str(failure.message))
            assert "blocked" in failure.message
            [line] = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
            assert line["key"] == failure.key and line["error"] == "ContentPolicyError"
            assert len(read_metadata(out)) == 3

            # the failed one again, with every answer a refused key: the run stops
            server.answers += [FakeAnswer(401, {"error": {"message": "bad key"}})] * 4
            with pytest.raises(AuthenticationError):
                generate_dataset(gen, plan, out, progress=False, engine="ray", ray=TWO)
            server.answers.clear()
            report = generate_dataset(gen, plan, out, progress=False, engine="ray", ray=TWO)
            assert (report.skipped, report.generated, report.complete) == (3, 1, True)
    assert _all_cpus_free(ray_cluster)


@pytest.mark.slow
def test_a_worker_that_cannot_build_the_generator_stops_the_run(
    tmp_path: Path, tiny_sdxl_path: Path, ray_cluster: Any
) -> None:
    """Each worker loads the weights itself: a local folder gone there stops the run."""
    model = shutil.copytree(tiny_sdxl_path, tmp_path / "tiny-sdxl")
    with DeskGenerator("sdxl", model=str(model), device="cpu") as gen:
        shutil.rmtree(model)
        with pytest.raises(ModelNotFoundError):
            generate_dataset(gen, PLAN, tmp_path / "data", progress=False, engine="ray", ray=TWO)
    assert read_metadata(tmp_path / "data") == []


def test_the_generator_spec_builds_the_same_generator(tmp_path: Path, tiny_sdxl_path: Path) -> None:
    """What a Ray worker builds: the constructor's arguments, then the LoRA changes since."""
    from deskgen.testing import make_tiny_lora

    a, b, c = (
        make_tiny_lora(tiny_sdxl_path, tmp_path / f"{name}.safetensors", seed=seed)
        for seed, name in enumerate("abc")
    )
    with DeskGenerator(
        "sdxl", model=str(tiny_sdxl_path), device="cpu", loras=[str(a)], fuse_loras=True
    ) as gen:
        gen.unfuse_loras()
        gen.unload_lora("a")
        gen.load_lora(LoraSpec(path=str(b), weight=0.5))
        gen.load_lora(str(c))
        gen.unload_lora("c")
        gen.fuse_loras()
        spec = pickle.loads(pickle.dumps(gen.spec))
        assert (spec.backend, spec.device, spec.dtype, spec.unloaded) == (
            "sdxl",
            "cpu",
            "auto",
            ("a",),
        )
        assert [lora.adapter_name for lora in spec.loras] == ["b"] and spec.fused == {"b": 0.5}
        assert "fuse_loras" not in repr(spec)  # options may hold an API key
        with spec.build() as again:
            assert generator_key(again) == generator_key(gen)
            assert again.spec == spec


def test_ray_is_imported_only_when_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = "import sys, deskgen, deskgen._dataset; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    monkeypatch.setitem(sys.modules, "ray", None)  # as when it is not installed
    with DeskGenerator("fake") as gen:
        with pytest.raises(MissingDependencyError, match=r"deskgen\[ray\]"):
            generate_dataset(gen, PLAN, tmp_path / "data", progress=False, engine="ray")
        with pytest.raises(Exception, match="needs engine='ray'"):
            generate_dataset(gen, PLAN, tmp_path / "data", progress=False, ray=TWO)
