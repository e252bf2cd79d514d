"""A benchmark seen side by side: a contact sheet PNG (the photo, then each configuration's output
with its time and memory) and a self-contained HTML report (images embedded, inline CSS, one
small inline script for its before/after sliders, which work without it at 50%)."""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING

from PIL import Image

from .._exceptions import ConfigError, ImageInputError
from .._record import atomic_write, atomic_write_bytes
from ._report import MASKED_COLUMN, BenchReport, BenchRow
from ._run import BEFORE_AFTER_PREFIX

if TYPE_CHECKING:
    from PIL import ImageFont

__all__ = ["contact_sheet", "html_report", "write_comparison"]

PAD = 8
"""Pixels between tiles and around the sheet."""
HEADER = 28
"""Height of the band with the prompt at the top."""
FONT_SIZE = 13
LINE = 16
CAPTION = 3 * LINE + 6
"""Height of the three caption lines under each tile."""
BACKGROUND = (245, 245, 242)
TILE_BACKGROUND = (225, 225, 220)
INK = (20, 20, 20)
FAILED_INK = (170, 20, 20)


def sheet_size(tiles: int, *, tile: int, columns: int) -> tuple[int, int]:
    """The size of a sheet of ``tiles`` tiles of ``tile`` pixels, ``columns`` per row."""
    cols = max(1, min(columns, tiles))
    rows = -(-tiles // cols)
    return cols * tile + (cols + 1) * PAD, HEADER + rows * (tile + CAPTION) + (rows + 1) * PAD


def _open(folder: Path, name: str | None) -> Image.Image | None:
    """The report's image ``name``, read as photos are (format allow-list, pixel limits), and
    only from inside ``folder`` (a report can't point at other files on the disk)."""
    from .._dataset import inside
    from .._images import load_image

    path = inside(folder, name) if name else None
    if path is None or not path.is_file():
        return None
    try:
        image, _ = load_image(path)
    except ImageInputError:  # damaged or replaced: an empty tile, not a failed sheet
        return None
    return image


def _fit(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def _captions(row: BenchRow) -> list[str]:
    if not row.ok:
        return [row.label, "failed", row.error or ""]
    quality = [f"edge SSIM {row.edge_ssim:.3f}"] if row.edge_ssim is not None else []
    if row.edge_ssim_outside is not None and row.edge_ssim_inside is not None:
        quality = [f"SSIM out {row.edge_ssim_outside:.3f} / in {row.edge_ssim_inside:.3f}"]
    quality += [f"CLIP {row.clip_score:.1f}"] if row.clip_score is not None else []
    return [
        row.label,
        f"{row.median_seconds:.2f} s/image, {row.memory_text()}",
        ", ".join(quality) or f"{row.width}x{row.height}, {row.steps} steps",
    ]


def _mask_overlay(
    folder: Path, report: BenchReport, photo: Image.Image | None
) -> Image.Image | None:
    """The config's mask over the photo (`deskgen.masks.mask_overlay`), if there is one."""
    mask = _open(folder, report.mask)
    if mask is None or photo is None:
        return None
    from ..masks import mask_overlay

    return mask_overlay(photo, mask.convert("L"))


def contact_sheet(
    report: BenchReport, folder: str | os.PathLike[str], *, tile: int = 256, columns: int = 4
) -> Image.Image:
    """The labelled grid: the photo (if any), the config's mask over it (if any), then each
    configuration's image, each captioned with its label, seconds per image, peak memory and
    quality columns. ``folder`` holds the report's images. See `sheet_size` for the layout."""
    if tile < 64 or columns < 1:
        raise ConfigError(
            f"tile={tile}, columns={columns}: tiles need at least 64 pixels and a row one tile."
        )
    root = Path(folder)
    entries: list[tuple[Image.Image | None, list[str], bool]] = []
    photo = _open(root, report.photo)
    if photo is not None:
        entries.append((photo, ["photo", f"{photo.width}x{photo.height}", ""], True))
    overlay = _mask_overlay(root, report, photo)
    if overlay is not None:
        entries.append((overlay, ["mask", "red: changed", ""], True))
    for row in report.rows:
        entries.append((_open(root, row.image), _captions(row), row.ok))
    size = sheet_size(len(entries), tile=tile, columns=columns)
    sheet = Image.new("RGB", size, BACKGROUND)
    from PIL import ImageDraw, ImageFont, ImageOps  # drawing only: not at `import deskgen`

    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=FONT_SIZE)
    prompt = str(report.config.get("prompt", ""))
    draw.text((PAD, PAD), _fit(f"prompt: {prompt}", font, size[0] - 2 * PAD), fill=INK, font=font)
    cols = max(1, min(columns, len(entries)))
    for index, (image, lines, ok) in enumerate(entries):
        x = PAD + (index % cols) * (tile + PAD)
        y = HEADER + PAD + (index // cols) * (tile + CAPTION + PAD)
        draw.rectangle([x, y, x + tile - 1, y + tile - 1], fill=TILE_BACKGROUND)
        if image is not None:
            thumb = ImageOps.contain(image, (tile, tile), Image.Resampling.LANCZOS)
            sheet.paste(thumb, (x + (tile - thumb.width) // 2, y + (tile - thumb.height) // 2))
        for line, text in enumerate(lines):
            draw.text(
                (x, y + tile + 3 + line * LINE),
                _fit(text, font, tile),
                fill=INK if ok or line == 0 else FAILED_INK,
                font=font,
            )
    return sheet


def _data_uri(image: Image.Image, *, side: int = 768) -> str:
    thumb = image.copy()
    thumb.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fafaf8}
h1{font-size:1.4em}table{border-collapse:collapse;margin:12px 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eee}.grid{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0;width:320px;background:#fff;border:1px solid #ddd;padding:8px}
figure img{width:100%;height:auto;display:block}figcaption{font-size:.85em;margin-top:6px}
.failed{color:#a11}.muted{color:#666;font-size:.85em}pre{white-space:pre-wrap;font-size:.8em}
figure.wide{width:480px}.ba{--at:50%}.ba-view{position:relative;line-height:0}
.ba-view .after{position:absolute;top:0;left:0;clip-path:inset(0 0 0 var(--at))}
.ba-view::after{content:"";position:absolute;top:0;bottom:0;left:var(--at);width:2px;
margin-left:-1px;background:#fff;box-shadow:0 0 2px #000}
.ba input{width:100%;margin:6px 0 0;display:block}
"""

SLIDE = "this.parentNode.style.setProperty('--at',this.value+'%')"
"""A before/after slider's ``oninput``: where the output's clip starts. Without scripts the
stylesheet's ``--at:50%`` holds: both pictures show, half each."""
_SCRIPT = (
    "(function(){var m=/(?:^|[#&])at=(\\d{1,3})(?:&|$)/.exec(location.hash.slice(1));"
    "if(!m)return;document.querySelectorAll('.ba input').forEach(function(r){r.value=m[1];"
    "r.dispatchEvent(new Event('input'))})})();"
)
"""The page's only script: ``report.html#at=30`` starts every slider at 30%."""


def html_report(report: BenchReport, folder: str | os.PathLike[str]) -> str:
    """One HTML page with everything inside (images as data URIs, inline CSS, nothing
    fetched): the prompt, the photo (and the mask over it) and every output side by side, a
    before/after slider for each run made from the photo, the table, the settings and the
    environment.

    A slider stacks the photo (cropped to the output's shape, as the backends saw it) and the
    output in one box, the output clipped from the slider's place to the right. Its only
    script is its ``oninput`` (setting a CSS variable) and a line that reads ``#at=NN`` from
    the address; without scripts it stays at 50%, both pictures showing."""
    root = Path(folder)
    esc = html.escape
    config = report.config
    figures = []
    photo = _open(root, report.photo)
    if photo is not None:
        figures.append(
            f'<figure><img alt="the desk photo" src="{_data_uri(photo)}">'
            f"<figcaption><b>photo</b><br>{photo.width}x{photo.height}</figcaption></figure>"
        )
    overlay = _mask_overlay(root, report, photo)
    if overlay is not None:
        figures.append(
            f'<figure><img alt="the mask over the photo" src="{_data_uri(overlay)}">'
            "<figcaption><b>mask</b><br>the config's, red: what changes</figcaption></figure>"
        )
    sliders = []
    for row in report.rows:
        image = _open(root, row.image)
        picture = (
            f'<img alt="{esc(row.label)}" src="{_data_uri(image)}">'
            if image is not None
            else '<p class="failed">no image</p>'
        )
        lines = "<br>".join(esc(line) for line in _captions(row)[1:])
        warnings = "".join(f'<br><span class="muted">{esc(w)}</span>' for w in row.warnings)
        state = "" if row.ok else ' class="failed"'
        figures.append(
            f"<figure>{picture}<figcaption><b>{esc(row.label)}</b><br><span{state}>{lines}"
            f"</span><br>{esc(row.settings())}{warnings}</figcaption></figure>"
        )
        if image is not None and photo is not None and row.mode not in (None, "txt2img"):
            sliders.append(_before_after(row, photo, image))
    table = _html_table(report)
    env = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in report.environment.items()
    )
    negative = config.get("negative_prompt")
    before_after = (
        "<h2>Before and after</h2><p class='muted'>Left of the line: the photo; right: the "
        "output. Drag the slider under each.</p>"
        f"<div class='grid'>{''.join(sliders)}</div>"
        if sliders
        else ""
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>deskgen comparison</title><style>{_STYLE}</style></head><body>"
        "<h1>deskgen comparison</h1>"
        f"<p><b>prompt:</b> {esc(str(config.get('prompt', '')))}</p>"
        + (f"<p><b>negative prompt:</b> {esc(str(negative))}</p>" if negative else "")
        + f"<p class='muted'>seed {esc(str(config.get('seed')))}, {esc(str(config.get('warmup')))}"
        f" warm-up and {esc(str(config.get('repeats')))} measured runs per configuration; "
        f"{esc(report.created_at.isoformat(timespec='seconds'))}, deskgen "
        f"{esc(report.deskgen_version)}</p>"
        f"<div class='grid'>{''.join(figures)}</div>{before_after}"
        f"<h2>Measurements</h2>{table}"
        f"<h2>Environment</h2><table>{env}</table>"
        "<h2>Configurations</h2><pre>"
        + esc(json.dumps(config.get("runs", []), indent=2, ensure_ascii=False))
        + "</pre>"
        + (f"<script>{_SCRIPT}</script>" if sliders else "")
        + "</body></html>\n"
    )


def _before_after(row: BenchRow, photo: Image.Image, image: Image.Image) -> str:
    """A run's before/after slider: the photo as the backend saw it (cropped and resized to the
    output) under the output, clipped at the slider."""
    from .._images import prepare_image

    esc = html.escape
    before = prepare_image(photo, image.size)
    kept = (
        f"<br>structure kept outside / inside the mask: {esc(row.masked_text())}"
        if row.edge_ssim_outside is not None
        else ""
    )
    return (
        f"<figure class='wide'><div class='ba'><div class='ba-view'>"
        f"<img class='before' alt='before: the photo' src='{_data_uri(before)}'>"
        f"<img class='after' alt='after: {esc(row.label)}' src='{_data_uri(image)}'></div>"
        f"<input type='range' min='0' max='100' value='50' "
        f"aria-label='before and after: {esc(row.label)}' oninput=\"{SLIDE}\"></div>"
        f"<figcaption><b>{esc(row.label)}</b> ({esc(row.mode or '')}){kept}</figcaption>"
        "</figure>"
    )


def _html_table(report: BenchReport) -> str:
    esc = html.escape
    masked = report.masked
    head = [
        "run", "model", "resolution", "time per image", "peak memory", "mode", "steps", "load",
        "device", "settings", "edge SSIM", *([MASKED_COLUMN] if masked else []), "CLIP score",
    ]  # fmt: skip
    rows = []
    for row in report.rows:
        if row.ok:
            ssim = f"{row.edge_ssim:.3f}" if row.edge_ssim is not None else "n/a"
            clip = f"{row.clip_score:.1f}" if row.clip_score is not None else "n/a"
            cells = [*row.cells(), ssim, *([row.masked_text()] if masked else []), clip]
            titles = [None] * 10 + [row.edge_ssim_note]
            titles += [row.masked_ssim_note] if masked else []
            titles += [row.clip_score_note]
            tds = "".join(
                f"<td title='{esc(title or '')}'>{esc(c)}</td>"
                for c, title in zip(cells, titles, strict=True)
            )
        else:
            tds = (
                f"<td>{esc(row.label)}</td><td>{esc(row.model)}</td>"
                f"<td colspan='{len(head) - 2}' class='failed'>failed: {esc(row.error or '')}</td>"
            )
        rows.append(f"<tr>{tds}</tr>")
    header = "".join(f"<th>{esc(h)}</th>" for h in head)
    kinds = ("edge_ssim_note", "masked_ssim_note", "clip_score_note")
    notes = sorted(
        {
            note
            for row in report.rows
            for kind in kinds
            if (note := getattr(row, kind)) and (masked or kind != "masked_ssim_note")
        }
    )
    foot = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>" + (
        f"<p class='muted'>Notes:</p><ul class='muted'>{foot}</ul>" if foot else ""
    )


def _write_png(image: Image.Image, fh: IO[bytes]) -> None:
    image.save(fh, format="PNG")


def write_comparison(
    report: BenchReport,
    folder: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    tile: int = 256,
    columns: int = 4,
) -> list[Path]:
    """Write ``sheet.png`` and ``report.html`` for the report whose images are in ``folder``
    (into ``out``, by default the same folder), atomically, and for each masked run
    ``before-after-<image stem>.png``: the photo and its output side by side, captioned
    (`deskgen.masks.before_after`). Returns the paths."""
    target = Path(out) if out is not None else Path(folder)
    sheet = contact_sheet(report, folder, tile=tile, columns=columns)
    atomic_write(target / "sheet.png", lambda fh: sheet.save(fh, format="PNG"))
    atomic_write_bytes(target / "report.html", html_report(report, folder).encode("utf-8"))
    written = [target / "sheet.png", target / "report.html"]
    photo = _open(Path(folder), report.photo)
    for row in report.rows:
        image = _open(Path(folder), row.image) if row.mask is not None else None
        if photo is None or image is None or row.image is None:
            continue
        from ..masks import before_after

        path = target / f"{BEFORE_AFTER_PREFIX}{Path(row.image).stem}.png"
        atomic_write(path, functools.partial(_write_png, before_after(photo, image)))
        written.append(path)
    return written
