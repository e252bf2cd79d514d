"""The contact sheet and the HTML report."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageChops

from deskgen.bench import BenchReport, contact_sheet, html_report, write_comparison
from deskgen.bench._sheet import sheet_size


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.sources: list[str] = []
        self.text: list[str] = []
        self.handlers: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.sources += [v or "" for k, v in attrs if k in ("src", "href", "action", "srcset")]
        self.handlers += [v or "" for k, v in attrs if k.startswith("on")]
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)
        else:
            self.text.append(data)


def _chromium(url: str, shot: Path, *, size: str = "1200,900") -> None:
    """A screenshot of ``url`` (a file URI, with any #fragment) in headless Chromium."""
    command = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={shot.parent / 'profile'}", f"--window-size={size}",
        "--hide-scrollbars", f"--screenshot={shot}", url,
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=120)


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
    # the photo and both outputs, then each img2img run's before/after: the photo, the output
    assert parser.tags.count("img") == 3 + 2 * 2
    assert parser.tags.count("input") == 2 and parser.tags.count("script") == 1
    assert all(src.startswith("data:image/jpeg;base64,") for src in parser.sources)
    assert "structure kept outside" not in page  # no masked run: no masked column
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
    _chromium((tmp_path / "report.html").as_uri(), shot)
    with Image.open(shot) as image:
        assert image.size == (1200, 900)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 500  # text, tables and images drawn


def test_the_html_report_fetches_nothing_and_scripts_little(
    masked_run: tuple[BenchReport, Path],
) -> None:
    from deskgen.bench._sheet import _SCRIPT, SLIDE

    report, out = masked_run
    page = html_report(report, out)
    parser = _Page()
    parser.feed(page)
    # every resource is a data URI; no tag that fetches; no URL in the style or the script
    assert all(src.startswith("data:image/jpeg;base64,") for src in parser.sources)
    assert not {"link", "iframe", "object", "embed", "base", "form", "video", "audio"} & set(
        parser.tags
    )
    style = page[page.index("<style>") : page.index("</style>")]
    assert not re.search(r"(?i)(https?:|//|url\(|@import)", style + "".join(parser.scripts))
    outside_text = re.sub(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", "", page)
    outside_text = re.sub(r"(?s)<pre>.*?</pre>", "", outside_text)  # the configs (base_url)
    assert not re.search(r"(?i)https?://", outside_text)
    # one small inline script, and the sliders' oninput; nothing else runs
    assert parser.tags.count("script") == 1 and parser.scripts == [_SCRIPT]
    assert len(_SCRIPT) < 300 and "<script src" not in page
    assert parser.handlers == [SLIDE] * 3  # the three runs from the photo
    assert "eval" not in _SCRIPT and "fetch" not in _SCRIPT


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_the_before_after_slider_moves_in_headless_chromium(
    masked_run: tuple[BenchReport, Path], tmp_path: Path
) -> None:
    """One masked run's slider at 10% and at 90% (``#at=``, read by the page's script, which
    moves the slider as a drag would): the boundary moves inside one box; without scripts the
    slider stays at 50%, both pictures showing."""
    report, out = masked_run
    one = report.model_copy(update={"rows": [report.rows[0]]})  # the fake backend's, masked
    write_comparison(one, out, out=tmp_path)
    page = tmp_path / "report.html"
    # scripts off: Chromium's scriptEnabled=false also stops its --screenshot, so a copy of
    # the page forbids them itself (inline scripts and handlers alike)
    forbid = "<head><meta http-equiv='Content-Security-Policy' content=\"script-src 'none'\">"
    no_script = tmp_path / "no-script.html"
    no_script.write_text(page.read_text().replace("<head>", forbid, 1))
    shots = {}
    for name, url in [
        ("at10", page.as_uri() + "#at=10"),
        ("at90", page.as_uri() + "#at=90"),
        ("default", page.as_uri()),
        ("no-script", no_script.as_uri() + "#at=10"),
    ]:
        shots[name] = tmp_path / f"{name}.png"
        _chromium(url, shots[name], size="1200,1300")
    images = {name: Image.open(path).convert("RGB") for name, path in shots.items()}
    moved = ImageChops.difference(images["at10"], images["at90"])
    box = moved.getbbox()
    assert box is not None, "the slider did not move the boundary"
    left, top, right, bottom = box
    # within the one before/after box (480 px wide), across most of its width (10% to 90%)
    assert 0.6 * 460 < right - left <= 480 and bottom - top < 480
    changed = int((np.asarray(moved.crop(box)).max(axis=2) > 40).sum())
    assert changed > 0.05 * (right - left) * (bottom - top)  # the desk, not a hairline
    # the same page: only the box differs from the default (50%) rendering
    assert ImageChops.difference(images["at10"], images["default"]).getbbox() is not None
    # no script: the fragment does nothing, the slider sits at the stylesheet's 50% (compared
    # in the slider's box: text far below it may render a pixel apart between two loads)
    no_script, default = images["no-script"].crop(box), images["default"].crop(box)
    assert ImageChops.difference(no_script, default).getbbox() is None
    assert ImageChops.difference(no_script, images["at10"].crop(box)).getbbox() is not None
