"""run_bench on the tiny pipelines: the rows, the table, CSV and JSON, failures and isolation."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from deskgen import read_record
from deskgen.bench import BenchConfig, BenchEntry, BenchReport, run_bench
from deskgen.bench._run import BenchProgress


def test_rows_have_sane_numbers(bench_run: tuple[BenchReport, Path, list[str]]) -> None:
    report, out, _ = bench_run
    assert [row.label for row in report.rows] == ["SDXL <tiny>", "sd (balanced)"]
    for row in report.rows:
        assert row.ok, row.error
        assert len(row.seconds_per_image) == 3
        assert all(s > 0 for s in row.seconds_per_image)
        assert row.min_seconds <= row.median_seconds <= row.max_seconds  # type: ignore[operator]
        assert row.load_seconds is not None and row.load_seconds > 0
        assert row.peak_memory_bytes is not None and row.peak_memory_bytes > 2**20
        assert row.memory_kind == "process_rss"
        assert row.mode == "img2img"
        assert row.steps == int(4 * 0.6)  # steps 4 at the default strength 0.6
        assert set(row.phase_seconds) == {"control", "mask", "encode", "denoise", "decode"}
        assert row.phase_seconds["mask"] == 0.0 and row.mask is None  # unmasked
        assert row.edge_ssim_outside is None and "no mask" in str(row.masked_ssim_note)
        assert row.device == "cpu" and row.dtype == "float32"
        # the image is the real output, with its generation record
        with Image.open(out / str(row.image)) as image:
            assert image.size == (row.width, row.height)
        assert read_record(out / str(row.image)).prompt.startswith("a tidy desk")
        assert row.edge_ssim is not None and -1.0 <= row.edge_ssim <= 1.0
        assert row.clip_score is not None and 0.0 <= row.clip_score <= 100.0
        assert row.clip_score_note is None
    assert report.rows[1].preset == "balanced"
    assert report.rows[1].scheduler == "DPMSolverMultistepScheduler"
    assert report.rows[1].speed[0].startswith("balanced: DPMSolverMultistepScheduler")
    assert (out / "photo.png").is_file()


def test_warmup_and_repeats_are_respected(
    bench_run: tuple[BenchReport, Path, list[str]],
) -> None:
    _, _, calls = bench_run
    assert calls == ["sdxl"] * 4 + ["sd"] * 4  # 1 warm-up + 3 measured each


def test_markdown_csv_and_json(bench_run: tuple[BenchReport, Path, list[str]]) -> None:
    report, out, _ = bench_run
    table = (out / "bench.md").read_text()
    assert table == report.to_markdown()
    lines = table.splitlines()
    assert lines[0].startswith("| run | model | resolution | time per image")
    assert lines[2].startswith("| SDXL <tiny> | tiny-sdxl | 64x48 | ")
    assert "| img2img | 2 |" in lines[2]
    assert lines[3].startswith("| sd (balanced) | tiny-sd | 64x48 |")
    assert "3 measured runs after 1 warm-up, seed 0" in table
    rows = list(csv.DictReader(io.StringIO((out / "bench.csv").read_text())))
    assert [r["label"] for r in rows] == ["SDXL <tiny>", "sd (balanced)"]
    assert all(float(r["median_seconds"]) > 0 and r["repeats"] == "3" for r in rows)
    assert all(int(r["peak_memory_bytes"]) > 0 for r in rows)
    data = json.loads((out / "bench.json").read_text())
    assert data["rows"][0]["median_seconds"] == report.rows[0].median_seconds
    assert BenchReport.load(out) == report
    # machine paths stay out of the report
    assert str(out.parent) not in (out / "bench.json").read_text()


def test_a_failing_configuration_gets_an_error_row(
    tiny_paths: dict[str, Path], tmp_path: Path
) -> None:
    config = BenchConfig(
        prompt="a desk",
        request={"steps": 2},
        warmup=0,
        repeats=1,
        device="cpu",
        isolate=False,
        runs=[
            BenchEntry(backend="sdxl", model=str(tiny_paths["sdxl"]), options={"turbo": True}),
            BenchEntry(backend="sd", model=str(tiny_paths["sd"])),
            BenchEntry(backend="sd", label="gone", model=str(tmp_path / "private" / "sd15")),
        ],
    )
    report = run_bench(config, out=tmp_path / "out")
    failed, ok, gone = report.rows
    # the machine's paths stay out of error messages
    assert gone.error is not None and gone.error.startswith("ModelNotFoundError")
    assert "'sd15'" in gone.error and str(tmp_path) not in gone.error
    assert failed.error is not None and failed.error.startswith("ConfigError: Invalid options")
    assert failed.seconds_per_image == [] and failed.image is None
    assert ok.ok and ok.mode == "txt2img"
    assert ok.edge_ssim is None and ok.edge_ssim_note is not None
    assert "no photo" in ok.edge_ssim_note
    assert "no CLIP model given" in str(ok.clip_score_note)
    table = report.to_markdown()
    assert "failed: ConfigError" in table and "n/a [1]" in table and "[2] no CLIP" in table


def test_an_unusable_clip_model_says_why(tiny_paths: dict[str, Path], tmp_path: Path) -> None:
    config = BenchConfig(
        prompt="a desk",
        request={"steps": 2},
        warmup=0,
        repeats=1,
        device="cpu",
        isolate=False,
        clip_model=str(tmp_path / "no-such-clip"),
        runs=[BenchEntry(backend="sd", model=str(tiny_paths["sd"]))],
    )
    row = run_bench(config, out=tmp_path / "out").rows[0]
    assert row.clip_score is None
    assert str(row.clip_score_note).startswith("CLIP model not usable")


@pytest.mark.slow
def test_isolated_runs_measure_in_their_own_process(
    tiny_paths: dict[str, Path],
    bench_photo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import deskgen.bench._run

    def not_here(*args: object) -> None:
        raise AssertionError("measured in the parent process")

    monkeypatch.setattr(deskgen.bench._run, "measure", not_here)
    config = BenchConfig(
        prompt="a desk",
        image=str(bench_photo),
        request={"steps": 2},
        warmup=0,
        repeats=2,
        device="cpu",
        runs=[
            BenchEntry(backend="sd", model=str(tiny_paths["sd"])),
            BenchEntry(backend="sd", label="bad", model=str(tmp_path / "missing")),
        ],
    )
    events: list[BenchProgress] = []
    report = run_bench(config, out=tmp_path, on_progress=events.append)
    good, bad = report.rows
    assert good.ok and len(good.seconds_per_image) == 2
    # the workers' progress, as it happened: each repeat of the good one, the bad one's start
    stages = [(e.number, e.stage, e.index, e.count) for e in events]
    assert stages == [
        (1, "start", 0, 0),
        (1, "loaded", 0, 0),
        (1, "repeat", 1, 2),
        (1, "repeat", 2, 2),
        (2, "start", 0, 0),
    ]
    assert all(e.seconds is not None and e.seconds > 0 for e in events[1:4])
    assert {e.label for e in events} == {"sd", "bad"} and {e.total for e in events} == {2}
    assert good.peak_memory_bytes is not None and good.peak_memory_bytes > 2**20
    assert (tmp_path / str(good.image)).is_file()
    assert bad.error is not None and bad.error.startswith("ModelNotFoundError")
    assert str(tmp_path) not in bad.error
    assert not list(tmp_path.glob(".*.row.json"))  # the workers' row files are gone


def test_progress_of_each_configuration_and_repeat(
    tiny_paths: dict[str, Path], tmp_path: Path
) -> None:
    config = BenchConfig(
        prompt="a desk",
        request={"steps": 2},
        warmup=1,
        repeats=2,
        device="cpu",
        isolate=False,
        runs=[BenchEntry(backend="sd", model=str(tiny_paths["sd"]))],
    )
    events: list[BenchProgress] = []
    rows: list[str] = []
    report = run_bench(
        config,
        out=tmp_path,
        on_row=lambda number, total, row: rows.append(f"row {number}/{total}"),
        on_progress=lambda event: (events.append(event), rows.append(event.stage)),
    )
    assert report.rows[0].ok
    assert [(e.stage, e.index, e.count) for e in events] == [
        ("start", 0, 0),
        ("loaded", 0, 0),
        ("warmup", 1, 1),
        ("repeat", 1, 2),
        ("repeat", 2, 2),
    ]
    assert events[1].seconds == report.rows[0].load_seconds
    assert rows[-1] == "row 1/1"  # the row after its progress


@pytest.mark.slow
@pytest.mark.parametrize("stop", [RuntimeError, KeyboardInterrupt])
def test_a_raising_progress_callback_stops_the_worker(
    tiny_paths: dict[str, Path], tmp_path: Path, stop: type[BaseException]
) -> None:
    """An isolated worker whose progress callback raises (on its first event, while the worker
    loads) is killed, not left running without a timeout."""
    import psutil

    config = BenchConfig(
        prompt="a desk",
        warmup=0,
        repeats=1,
        device="cpu",
        runs=[BenchEntry(backend="sd", model=str(tiny_paths["sd"]))],
    )
    running: list[psutil.Process] = []

    def on_progress(event: BenchProgress) -> None:
        running.extend(psutil.Process().children(recursive=True))
        raise stop("the caller's callback failed")

    with pytest.raises(stop, match="callback failed"):
        run_bench(config, out=tmp_path, on_progress=on_progress)
    assert running, "no worker process while its progress came in"
    assert not [p for p in running if p.is_running()]  # killed and reaped
    assert psutil.Process().children(recursive=True) == []


def test_isolated_runs_stop_at_the_timeout(tiny_paths: dict[str, Path], tmp_path: Path) -> None:
    config = BenchConfig(
        prompt="a desk",
        warmup=0,
        repeats=1,
        device="cpu",
        timeout_s=0.05,
        runs=[BenchEntry(backend="sd", model=str(tiny_paths["sd"]))],
    )
    row = run_bench(config, out=tmp_path).rows[0]
    assert row.error == "stopped after 0.05 s"


def test_txt2img_runs_beside_img2img_and_names_stay_free(
    tiny_paths: dict[str, Path], bench_photo: Path, tmp_path: Path
) -> None:
    config = BenchConfig(
        prompt="a desk",
        image=str(bench_photo),
        request={"steps": 2},
        warmup=0,
        repeats=1,
        device="cpu",
        isolate=False,
        runs=[
            BenchEntry(backend="sdxl", label="sheet", model=str(tiny_paths["sdxl"])),
            BenchEntry(backend="sdxl", label="txt", model=str(tiny_paths["sdxl"]), use_photo=False),
        ],
    )
    report = run_bench(config, out=tmp_path)
    sheet, txt = report.rows
    assert (sheet.mode, sheet.image) == ("img2img", "sheet-2.png")  # sheet.png is compare's
    assert txt.mode == "txt2img" and txt.edge_ssim is None
    assert "no photo" in str(txt.edge_ssim_note)
    assert sheet.edge_ssim is not None
    assert "one process" in report.to_markdown()


def test_out_must_be_a_folder(tmp_path: Path) -> None:
    from deskgen import ConfigError

    (tmp_path / "file").write_text("x")
    config = BenchConfig(prompt="p", runs=[BenchEntry(backend="sd")])
    with pytest.raises(ConfigError, match="is a file"):
        run_bench(config, out=tmp_path / "file")


@pytest.mark.parametrize("isolate", [False, True], ids=["in-process", "isolated"])
def test_the_openai_backend_beside_them(bench_photo: Path, tmp_path: Path, isolate: bool) -> None:
    """The seed's DALL-E / GPT image row: an edit of the photo through the fake server; the
    API key reaches the backend (in the worker too) and never the report."""
    from deskgen.testing import FakeOpenAIServer

    secret = "sk-test-never-in-reports-0123456789"
    with FakeOpenAIServer() as server:
        config = BenchConfig(
            prompt="a tidy desk",
            image=str(bench_photo),
            warmup=2,
            repeats=3,
            isolate=isolate,
            runs=[
                BenchEntry(
                    backend="openai",
                    model="gpt-image-1",
                    options={"api_key": secret, "base_url": server.base_url},
                    warmup=0,  # a warm-up would be a billed request
                    repeats=2,
                )
            ],
        )
        report = run_bench(config, out=tmp_path)
        assert len(server.received) == 2  # no warm-up, two measured requests
    row = report.rows[0]
    assert row.ok, row.error
    assert (row.mode, row.backend, row.model) == ("edit", "openai", "gpt-image-1")
    assert row.cost_usd is not None and row.cost_usd > 0
    assert row.memory_kind == "process_rss" and row.peak_memory_bytes
    assert row.options["api_key"] == "***"
    assert len(row.seconds_per_image) == 2
    for name in ("bench.json", "bench.md", "bench.csv"):
        assert secret not in (tmp_path / name).read_text()
    assert "3 measured runs after 2 warm-up (openai: 2 after 0), seed 0" in report.to_markdown()


def test_a_controlnet_run_is_reported_as_controlnet(
    tiny_paths: dict[str, Path],
    tiny_control_paths: dict[str, Path],
    bench_photo: Path,
    tmp_path: Path,
) -> None:
    config = BenchConfig(
        prompt="a tidy desk",
        image=str(bench_photo),
        request={"steps": 3},
        warmup=0,
        repeats=1,
        device="cpu",
        isolate=False,
        runs=[
            BenchEntry(
                backend="sdxl-controlnet",
                model=str(tiny_paths["sdxl"]),
                options={
                    "controlnet": str(tiny_control_paths["canny"]),
                    "control": "canny",
                    "preset": "balanced",
                },
            )
        ],
    )
    row = run_bench(config, out=tmp_path).rows[0]
    assert row.ok, row.error
    assert (row.mode, row.scheduler, row.steps) == ("controlnet", "DPMSolverMultistepScheduler", 2)
    assert row.phase_seconds["control"] > 0  # the edges computed from the photo
    assert row.edge_ssim is not None
