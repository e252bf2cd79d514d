"""Masked benchmarks (issue 18, keep the room): the config's mask, the error rows of backends
that take none, the outside/inside edge SSIM columns, compare's before/after pictures."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from deskgen import read_record
from deskgen.bench import BenchConfig, BenchEntry, BenchReport, run_bench, write_comparison
from deskgen.bench._report import MASKED_COLUMN
from deskgen.masks import DeskMask

from .conftest import draw_mask


def test_config_masks_reach_the_requests(bench_photo: Path) -> None:
    auto = DeskMask(grow=4, targets=("desk",))
    config = BenchConfig(
        prompt="a desk",
        image=str(bench_photo),
        mask="auto",
        desk_mask=auto,
        runs=[
            BenchEntry(backend="sd"),
            BenchEntry(backend="sd", label="own", mask="m.png"),
            BenchEntry(backend="sd", label="whole", use_mask=False),
            BenchEntry(backend="sd", label="txt", use_photo=False),
        ],
    )
    shared, own, whole, txt = (config.request_for(entry) for entry in config.runs)
    assert shared.desk_mask == auto and shared.mode == "inpaint"
    assert config.shares_mask(config.runs[0]) and not config.shares_mask(config.runs[1])
    found = config.request_for(config.runs[0], found_mask="out/mask.png")
    assert (found.mask, found.desk_mask) == ("out/mask.png", None)
    assert (own.mask, own.desk_mask) == ("m.png", None)
    assert not whole.masked and whole.mode == "img2img"
    assert not txt.masked and txt.mode == "txt2img"
    # settings alone mean "auto"; the public form keeps the mask's file name only
    alone = BenchConfig(
        prompt="a desk",
        image=str(bench_photo),
        desk_mask=auto,
        runs=[BenchEntry(backend="sd"), BenchEntry(backend="sd", label="b", mask="/x/y/m.png")],
    )
    assert alone.mask_for(alone.runs[0]) == "auto"
    assert alone.public()["runs"][1]["mask"] == "m.png"
    assert alone.public()["desk_mask"]["grow"] == 4
    assert "/x/y/m.png" in alone.local_paths()


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"mask": "auto"}, "give image too"),
        (
            {"image": "p.png", "runs": [{"backend": "sd", "mask": "m.png", "use_photo": False}]},
            "mask needs the photo",
        ),
        (
            {"image": "p.png", "runs": [{"backend": "sd", "mask": "m.png", "use_mask": False}]},
            "give one",
        ),
        ({"image": "p.png", "mask": "m.png", "desk_mask": {"grow": 2}}, "leave out desk_mask"),
        ({"image": "p.png", "request": {"desk_mask": {"grow": 2}}}, "the config's own field"),
        ({"image": "p.png", "mask": "m.png", "request": {"keep_unmasked": "yes"}}, "keep_unmasked"),
    ],
)
def test_bad_mask_settings_are_refused(fields: dict[str, Any], match: str) -> None:
    from pydantic import ValidationError

    data = {"prompt": "a desk", "runs": [{"backend": "sd"}], **fields}
    with pytest.raises(ValidationError, match=match):
        BenchConfig.model_validate(data)


def test_masked_rows(masked_run: tuple[BenchReport, Path], bench_photo: Path) -> None:
    report, out = masked_run
    fake, openai, refused, whole = report.rows
    with Image.open(bench_photo) as photo:
        photo_size = photo.size
    for row in (fake, openai):
        assert row.ok, row.error
        assert row.mode == "inpaint"
        assert row.mask == f"{Path(str(row.image)).stem}.mask.png"
        with Image.open(out / row.mask) as mask, Image.open(out / str(row.image)) as image:
            assert mask.mode == "L" and mask.size == photo_size == image.size
        # the photo's own pixels outside the mask: exactly 1.0; the desk redrawn: less
        assert row.edge_ssim_outside == 1.0
        assert row.edge_ssim_inside is not None and row.edge_ssim_inside < 0.9
        assert row.masked_ssim_note is None
        record = read_record(out / str(row.image))
        assert record.mask_sha256 is not None and record.desk_mask is None
    assert refused.error is not None and "takes no mask" in refused.error
    assert "use_mask: false" in refused.error and refused.image is None
    assert refused.load_seconds is None  # never loaded
    assert whole.ok and whole.mode == "img2img" and whole.mask is None
    assert whole.edge_ssim_outside is None and "no mask" in str(whole.masked_ssim_note)
    assert report.mask == "mask.png"
    with Image.open(out / "mask.png") as mask, Image.open(bench_photo) as photo:
        assert mask.mode == "L" and mask.size == photo.size
        assert mask.tobytes() == draw_mask(photo.size).tobytes()


def test_masked_tables(masked_run: tuple[BenchReport, Path]) -> None:
    report, out = masked_run
    table = report.to_markdown().splitlines()
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header[11] == MASKED_COLUMN == "structure kept outside / inside the mask (edge SSIM)"
    assert all(line.count("|") == table[0].count("|") for line in table[1:6])
    assert "| inpaint |" in table[2] and "| 1.000 / 0." in table[2]
    assert "failed: UnsupportedOperationError" in table[4]
    assert "| img2img |" in table[5] and "n/a [" in table[5]
    assert "no mask: this run changed the whole photo" in report.to_markdown()
    rows = list(csv.DictReader(io.StringIO((out / "bench.csv").read_text())))
    assert rows[0]["edge_ssim_outside"] == "1" and float(rows[0]["edge_ssim_inside"]) < 0.9
    assert rows[0]["mask"] == "fake-masked.mask.png" and rows[3]["edge_ssim_outside"] == ""
    assert BenchReport.load(out) == report


def test_compare_writes_before_after_pictures(
    masked_run: tuple[BenchReport, Path], tmp_path: Path
) -> None:
    report, out = masked_run
    paths = write_comparison(report, out, out=tmp_path, tile=64)
    names = [p.name for p in paths]
    assert names == [
        "sheet.png",
        "report.html",
        "before-after-fake-masked.png",
        "before-after-openai.png",
    ]  # masked runs only
    with Image.open(tmp_path / "before-after-fake-masked.png") as pair:
        assert pair.size == (96 + 8 + 96, 72)
    page = (tmp_path / "report.html").read_text()
    assert MASKED_COLUMN in page and "the mask over the photo" in page
    # three runs from the photo, each with a before/after slider
    assert page.count("type='range'") == 3
    with Image.open(tmp_path / "sheet.png") as sheet:
        # the photo, the mask over it and four runs
        from deskgen.bench._sheet import sheet_size

        assert sheet.size == sheet_size(6, tile=64, columns=4)


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny trained SegFormer (seconds) and a desk photo it finds the desk in."""
    from deskgen.testing._segmentation import make_desk_photo, make_tiny_segmenter

    root = tmp_path_factory.mktemp("segmenter")
    photo, _ = make_desk_photo(seed=7)
    photo.save(root / "desk.png")
    return make_tiny_segmenter(root / "segformer"), root / "desk.png"


def test_auto_masks_are_found_once_for_every_run(
    backends: None, segmenter: tuple[Path, Path], tmp_path: Path
) -> None:
    model, photo = segmenter
    config = BenchConfig(
        prompt="a tidy desk",
        image=str(photo),
        mask="auto",
        desk_mask=DeskMask(model=str(model), grow=2, blur=2),
        warmup=0,
        repeats=1,
        isolate=False,
        device="cpu",
        runs=[
            BenchEntry(backend="bench-fake", label="a", request={"width": 96, "height": 64}),
            BenchEntry(backend="bench-fake", label="b", request={"width": 96, "height": 64}),
            BenchEntry(backend="bench-fake", label="own", mask="auto"),
        ],
    )
    report = run_bench(config, out=tmp_path / "out")
    a, b, own = report.rows
    assert all(row.ok and row.mode == "inpaint" for row in report.rows), report.rows
    out = tmp_path / "out"
    shared = (out / "mask.png").read_bytes()
    assert report.mask == "mask.png"
    records = [read_record(out / str(row.image)) for row in report.rows]
    # the same mask for both (the found one, given as an image); "own" found it itself
    assert records[0].mask_sha256 == records[1].mask_sha256 is not None
    assert records[0].desk_mask is None and records[2].desk_mask is not None
    with Image.open(out / "mask.png") as found, Image.open(out / str(a.mask)) as used:
        assert found.tobytes() == used.tobytes()
    assert own.phase_seconds["mask"] > a.phase_seconds["mask"]
    assert a.edge_ssim_outside == b.edge_ssim_outside == 1.0
    assert shared  # written once, before the runs


def test_a_mask_of_another_shape_fails_before_any_run(
    backends: None, bench_photo: Path, tmp_path: Path
) -> None:
    from deskgen import ImageInputError

    Image.new("L", (50, 50), 255).save(tmp_path / "square.png")
    config = BenchConfig(
        prompt="a desk",
        image=str(bench_photo),
        mask=str(tmp_path / "square.png"),
        isolate=False,
        runs=[BenchEntry(backend="bench-fake")],
    )
    with pytest.raises(ImageInputError, match="another shape"):
        run_bench(config, out=tmp_path / "out")
    assert not (tmp_path / "out" / "bench-fake.png").exists()


def test_the_command_line_takes_a_mask(
    backends: None, bench_photo: Path, mask_path: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from deskgen.cli import main

    out = tmp_path / "out"
    args = [
        "compare", "--prompt", "a desk", "--image", str(bench_photo), "--mask", str(mask_path),
        "--run", "bench-fake,width=96,height=72",
        "--run", "bench-fake,label=whole,use_mask=false",
        "--run", "bench-fake-no-masks", "--warmup", "0", "--repeats", "1", "--no-isolate",
        "--out", str(out), "--tile", "64",
    ]  # fmt: skip
    assert main(args) == 1  # the run whose backend takes no mask failed
    captured = capsys.readouterr()
    assert MASKED_COLUMN in captured.out and "| inpaint |" in captured.out
    assert "before-after-bench-fake.png" in captured.err
    assert (out / "before-after-bench-fake.png").is_file()
    assert not (out / "before-after-whole.png").exists()


def test_an_sd_inpainting_run_keeps_the_room(
    tiny_paths: dict[str, Path], bench_photo: Path, mask_path: Path, tmp_path: Path
) -> None:
    """The tiny SD pipeline's inpainting: a real backend that takes masks."""
    config = BenchConfig(
        prompt="a tidy desk",
        image=str(bench_photo),
        mask=str(mask_path),
        request={"steps": 2},
        warmup=0,
        repeats=1,
        device="cpu",
        isolate=False,
        runs=[BenchEntry(backend="sd", model=str(tiny_paths["sd"]))],
    )
    row = run_bench(config, out=tmp_path).rows[0]
    assert row.ok, row.error
    assert row.mode == "inpaint" and (tmp_path / str(row.mask)).is_file()
    assert row.edge_ssim_outside == 1.0
    assert row.edge_ssim_inside is not None and row.edge_ssim_inside < 1.0


@pytest.mark.slow
def test_isolated_runs_get_the_mask_found_once(
    tiny_paths: dict[str, Path], segmenter: tuple[Path, Path], tmp_path: Path
) -> None:
    """``mask: auto`` with isolated runs: the worker gets the found mask, not the settings."""
    model, photo = segmenter
    config = BenchConfig(
        prompt="a tidy desk",
        image=str(photo),
        mask="auto",
        desk_mask=DeskMask(model=str(model)),
        request={"steps": 2},
        warmup=0,
        repeats=1,
        device="cpu",
        runs=[BenchEntry(backend="sd", model=str(tiny_paths["sd"]))],
    )
    row = run_bench(config, out=tmp_path).rows[0]
    assert row.ok, row.error
    assert row.mode == "inpaint" and row.edge_ssim_outside == 1.0
    record = read_record(tmp_path / str(row.image))
    assert record.desk_mask is None and record.mask_sha256 is not None
    with Image.open(tmp_path / "mask.png") as found, Image.open(tmp_path / str(row.mask)) as used:
        assert found.tobytes() == used.tobytes()
