"""What a benchmark found: one `BenchRow` per configuration, the `BenchReport` around them, and
its Markdown (shaped like the seed's model table), CSV and JSON forms."""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

from .._exceptions import ConfigError
from .._record import atomic_write_bytes

__all__ = ["BenchMode", "BenchReport", "BenchRow"]

BenchMode = Literal["txt2img", "img2img", "controlnet", "edit", "inpaint"]
"""How a run made its image: from the prompt alone, the photo re-noised, steered by control
images of it, edited by an instruction, or only the masked part redrawn (``inpaint``)."""

REPORT_FILE = "bench.json"
MASKED_COLUMN = "structure kept outside / inside the mask (edge SSIM)"


class BenchRow(BaseModel):
    """One configuration's measurements (``error`` set and figures ``None`` when it failed)."""

    label: str
    backend: str
    model: str
    """Hub id, or a local folder's name (records never reveal the machine's paths)."""
    mode: BenchMode | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    """Denoising steps the model ran (img2img: ``int(steps * strength)``)."""
    scheduler: str | None = None
    device: str | None = None
    dtype: str | None = None
    load_seconds: float | None = None
    seconds_per_image: list[float] = Field(default_factory=list)
    """Each measured repeat's whole request time divided by its images."""
    phase_seconds: dict[str, float] = Field(default_factory=dict)
    """Median seconds of each phase (encode, denoise, decode, control)."""
    peak_memory_bytes: int | None = None
    """The largest peak of the measured repeats."""
    memory_kind: Literal["cuda_allocated", "process_rss"] | None = None
    load_peak_bytes: int | None = None
    quantization: str | None = None
    loras: list[str] = Field(default_factory=list)
    preset: str | None = None
    speed: list[str] = Field(default_factory=list)
    """The preset and speed options in effect, in words."""
    cost_usd: float | None = None
    """Per image, for paid APIs."""
    edge_ssim: float | None = None
    """Structure kept: SSIM of the photo's and the output's edge maps (1: the same edges)."""
    edge_ssim_note: str | None = None
    """Why ``edge_ssim`` is missing."""
    edge_ssim_outside: float | None = None
    """Masked runs: the room kept, edge SSIM outside the mask (1.0: the photo's own edges
    there; exactly 1.0 when the photo's pixels were put back outside it)."""
    edge_ssim_inside: float | None = None
    """Masked runs: the structure kept inside the mask (the desk's place and shape)."""
    masked_ssim_note: str | None = None
    """Why ``edge_ssim_outside``/``edge_ssim_inside`` are missing."""
    clip_score: float | None = None
    """Prompt adherence: torchmetrics' CLIP score of the output and the prompt (0-100)."""
    clip_score_note: str | None = None
    image: str | None = None
    """The first measured output, a PNG beside the report (with its generation record)."""
    mask: str | None = None
    """Masked runs: the mask the first measured output was made with (grey, the photo's
    size), a PNG beside its image (``<image stem>.mask.png``)."""
    warnings: list[str] = Field(default_factory=list)
    error: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    """The options the entry gave (secrets masked)."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def median_seconds(self) -> float | None:
        return statistics.median(self.seconds_per_image) if self.seconds_per_image else None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def min_seconds(self) -> float | None:
        return min(self.seconds_per_image) if self.seconds_per_image else None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def max_seconds(self) -> float | None:
        return max(self.seconds_per_image) if self.seconds_per_image else None

    @property
    def ok(self) -> bool:
        return self.error is None

    def settings(self) -> str:
        """Preset, quantization and LoRAs, in a few words."""
        parts = [f"preset {self.preset}"] if self.preset else []
        parts += [self.quantization] if self.quantization else []
        parts += [f"LoRA {', '.join(self.loras)}"] if self.loras else []
        parts += [s for s in self.speed if not s.startswith(f"{self.preset}:")]
        return "; ".join(parts) or "defaults"

    def memory_text(self) -> str:
        if self.peak_memory_bytes is None:
            return "n/a"
        where = "VRAM" if self.memory_kind == "cuda_allocated" else "RAM"
        return f"{self.peak_memory_bytes / 2**30:.2f} GiB {where}"

    def time_text(self) -> str:
        if self.median_seconds is None:
            return "n/a"
        return f"{self.median_seconds:.2f} s ({self.min_seconds:.2f}-{self.max_seconds:.2f})"

    @property
    def masked(self) -> bool:
        return self.mask is not None or self.edge_ssim_outside is not None

    def masked_text(self) -> str:
        """``outside / inside`` edge SSIM, or ``n/a``."""
        if self.edge_ssim_outside is None or self.edge_ssim_inside is None:
            return "n/a"
        return f"{self.edge_ssim_outside:.3f} / {self.edge_ssim_inside:.3f}"

    def cells(self) -> list[str]:
        """A measured row's table cells up to the settings (the quality columns follow; the
        Markdown table and the HTML report add them with their notes)."""
        return [
            self.label,
            self.model,
            f"{self.width}x{self.height}",
            self.time_text(),
            self.memory_text(),
            self.mode or "",
            str(self.steps),
            f"{self.load_seconds:.1f} s",
            f"{self.device} {self.dtype}",
            self.settings(),
        ]


class BenchReport(BaseModel):
    """A benchmark's rows with what they were measured on."""

    rows: list[BenchRow]
    config: dict[str, Any]
    """The `BenchConfig` run (secrets masked)."""
    environment: dict[str, str]
    """Python, torch, diffusers versions; the CPU and GPU."""
    photo: str | None = None
    """The desk photo as run, a PNG beside the report."""
    mask: str | None = None
    """The config's mask as run (grey, the photo's size: the image given, or the one
    ``mask: auto`` found for every run), a PNG beside the report."""
    deskgen_version: str
    created_at: datetime

    # -- forms -------------------------------------------------------------------------------

    def to_markdown(self) -> str:
        """The seed's table, one row a configuration, with footnotes for missing columns."""
        notes: list[str] = []

        def quality(value: float | None, note: str | None, digits: int) -> str:
            text = f"{value:.{digits}f}" if value is not None else "n/a"
            if note is None:
                return text
            if note not in notes:
                notes.append(note)
            return f"{text} [{notes.index(note) + 1}]"

        header = [
            "run",
            "model",
            "resolution",
            "time per image (median, min-max)",
            "peak memory",
            "mode",
            "steps",
            "load",
            "device",
            "settings",
            "structure kept (edge SSIM)",
            *([MASKED_COLUMN] if self.masked else []),
            "prompt adherence (CLIP)",
        ]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in self.rows:
            if not row.ok:
                cells = [row.label, row.model, "", f"failed: {row.error}", "", "", "", "", ""]
                cells += [row.settings(), "", *([""] if self.masked else []), ""]
            else:
                cells = [*row.cells(), quality(row.edge_ssim, row.edge_ssim_note, 3)]
                if self.masked:
                    note = row.masked_ssim_note
                    cells.append(row.masked_text() if note is None else quality(None, note, 3))
                cells.append(quality(row.clip_score, row.clip_score_note, 1))
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        env = self.environment
        lines.append("")
        repeats, warmup = self.config.get("repeats"), self.config.get("warmup")
        own = []  # the runs with their own warm-up or repeats
        for run in self.config.get("runs", []):
            if run.get("warmup") is None and run.get("repeats") is None:
                continue
            run_warmup = warmup if run.get("warmup") is None else run["warmup"]
            name = run.get("label") or run.get("backend")
            own.append(f"{name}: {run.get('repeats') or repeats} after {run_warmup}")
        exceptions = f" ({'; '.join(own)})" if own else ""
        lines.append(
            f"{repeats} measured runs after {warmup} warm-up{exceptions}, seed "
            f"{self.config.get('seed')}; {env.get('device', '')}; deskgen "
            f"{self.deskgen_version}, torch {env.get('torch', 'n/a')}, diffusers "
            f"{env.get('diffusers', 'n/a')}."
        )
        if self.config.get("isolate") is False:
            lines.append(
                "All runs in one process: RAM figures include what earlier runs left behind."
            )
        for number, note in enumerate(notes, 1):
            lines.append(f"[{number}] {note}")
        return "\n".join(lines) + "\n"

    @property
    def masked(self) -> bool:
        """Whether any run was masked (the tables then have the masked edge SSIM column)."""
        return any(row.masked for row in self.rows)

    def to_csv(self) -> str:
        columns = [
            "label", "backend", "model", "mode", "width", "height", "steps", "scheduler",
            "device", "dtype", "load_seconds", "median_seconds", "min_seconds", "max_seconds",
            "repeats", "peak_memory_bytes", "memory_kind", "load_peak_bytes", "quantization",
            "loras", "preset", "speed", "edge_ssim", "edge_ssim_outside", "edge_ssim_inside",
            "clip_score", "cost_usd", "image", "mask", "error", "notes",
        ]  # fmt: skip
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            data = row.model_dump()
            data["repeats"] = len(row.seconds_per_image)
            data["loras"] = ";".join(row.loras)
            data["speed"] = ";".join(row.speed)
            notes = (row.edge_ssim_note, row.masked_ssim_note, row.clip_score_note)
            data["notes"] = " ".join(n for n in notes if n)
            writer.writerow({name: _csv_value(data.get(name)) for name in columns})
        return buffer.getvalue()

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    # -- files -------------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike[str]) -> list[Path]:
        """Write ``bench.json``, ``bench.md`` and ``bench.csv`` into ``folder`` (atomically)."""
        out = Path(folder)
        written = []
        for name, text in (
            (REPORT_FILE, self.to_json()),
            ("bench.md", self.to_markdown()),
            ("bench.csv", self.to_csv()),
        ):
            atomic_write_bytes(out / name, text.encode("utf-8"))
            written.append(out / name)
        return written

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> BenchReport:
        """The report `save` wrote into ``folder``.

        Raises:
            ConfigError: no report there, or not one deskgen wrote.
        """
        path = Path(folder) / REPORT_FILE
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError as exc:
            raise ConfigError(
                f"No {REPORT_FILE} in {str(folder)!r}: run `deskgen bench ... --out` there first."
            ) from exc
        except ValueError as exc:
            raise ConfigError(f"{str(path)!r} is not a deskgen bench report: {exc}") from exc


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value
