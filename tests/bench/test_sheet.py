"""The contact sheet and the HTML report."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from deskgen.bench import BenchReport, contact_sheet, html_report, write_comparison
from deskgen.bench._sheet import sheet_size


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.sources: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.sources += [v or "" for k, v in attrs if k in ("src", "href")]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_sheet_size_and_tiles(bench_run: tuple[BenchReport, Path, list[str]]) -> None:
    report, out, _ = bench_run
    sheet = contact_sheet(report, out, tile=128, columns=4)
    # the photo and two outputs in one row: 3 tiles of 128 with 8 px around each
    assert sheet_size(3, tile=128, columns=4) == (3 * 128 + 4 * 8, 28 + 128 + 54 + 2 * 8)
    assert sheet.size == (416, 226)
    # the photo's tile shows the photo: its desk (brown) in the lower part of the tile
    r, g, b = sheet.getpixel((8 + 64, 28 + 8 + 110))  # type: ignore[misc]
    assert r > g > b and r > 90
    two_rows = contact_sheet(report, out, tile=96, columns=2)
    expected = (2 * 96 + 3 * 8, 28 + 2 * 150 + 3 * 8)
    assert two_rows.size == sheet_size(3, tile=96, columns=2) == expected


def test_html_report_is_self_contained(bench_run: tuple[BenchReport, Path, list[str]]) -> None:
    report, out, _ = bench_run
    page = html_report(report, out)
    parser = _Page()
    parser.feed(page)
    assert "script" not in parser.tags
    assert parser.tags.count("img") == 3  # the photo and both outputs
    assert all(src.startswith("data:image/jpeg;base64,") for src in parser.sources)
    text = " ".join(parser.text)
    assert "SDXL <tiny>" in text and "<tiny>" not in page.replace("&lt;tiny&gt;", "")
    assert "a tidy desk with a lamp and a plant" in text
    assert "preset balanced" in text  # the settings of each run
    assert "Intel" in text or "CPU" in text  # the environment table


def test_reports_cannot_point_outside_their_folder(
    bench_run: tuple[BenchReport, Path, list[str]], tmp_path: Path
) -> None:
    report, out, _ = bench_run
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(outside)
    rows = [report.rows[0].model_copy(update={"image": str(outside)})]
    tampered = report.model_copy(update={"rows": rows, "photo": "../" + outside.name})
    page = html_report(tampered, out)
    assert page.count("<img") == 0  # neither the absolute nor the ../ path was read
    from deskgen import ConfigError

    with pytest.raises(ConfigError, match="64 pixels"):
        contact_sheet(report, out, tile=32)


def test_write_comparison_writes_both(
    bench_run: tuple[BenchReport, Path, list[str]], tmp_path: Path
) -> None:
    report, out, _ = bench_run
    paths = write_comparison(report, out, out=tmp_path, tile=64)
    assert [p.name for p in paths] == ["sheet.png", "report.html"]
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size == sheet_size(3, tile=64, columns=4)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_html_report_renders_in_headless_chromium(
    bench_run: tuple[BenchReport, Path, list[str]], tmp_path: Path
) -> None:
    report, out, _ = bench_run
    write_comparison(report, out, out=tmp_path)
    shot = tmp_path / "shot.png"
    command = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900",
        f"--screenshot={shot}", (tmp_path / "report.html").as_uri(),
    ]  # fmt: skip
    subprocess.run(
        command,
        check=True,
        capture_output=True,
        timeout=120,
    )
    with Image.open(shot) as image:
        assert image.size == (1200, 900)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 500  # text, tables and images drawn
