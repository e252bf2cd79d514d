"""Running a benchmark: each configuration loads, warms up, repeats the same request, and its
first measured image is saved; quality columns are computed afterwards, apart from the timings."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, SecretStr

from .._exceptions import ConfigError, DeskgenError
from .._images import load_image
from .._record import atomic_write, atomic_write_bytes, public_model_name
from .._version import __version__
from ._config import BenchConfig, BenchEntry
from ._report import BenchMode, BenchReport, BenchRow

if TYPE_CHECKING:
    from .._models import GenerationRequest, GenerationResult

__all__ = ["BenchProgress", "ProgressCallback", "run_bench"]

RowCallback = Callable[[int, int, BenchRow], None]
"""Called after each configuration with (its number from 1, how many, its row)."""

Stage = Literal["start", "loaded", "warmup", "repeat"]


@dataclass(frozen=True)
class BenchProgress:
    """Where a benchmark is: a configuration starts (and loads), has loaded, or finished one
    of its warm-up or measured runs."""

    number: int
    """The configuration, from 1."""
    total: int
    """Configurations in all."""
    label: str
    stage: Stage
    """``start``: loading begins; ``loaded``: the generator is ready; ``warmup``/``repeat``:
    that run finished."""
    index: int = 0
    """The warm-up or measured run that finished, from 1 (0 for ``start``/``loaded``)."""
    count: int = 0
    """Warm-up or measured runs in all (0 for ``start``/``loaded``)."""
    seconds: float | None = None
    """The load's seconds (``loaded``) or that run's (``warmup``/``repeat``)."""


ProgressCallback = Callable[[BenchProgress], None]
"""Called as a configuration starts, loads and finishes each run, in the caller's thread
(isolated configurations report from their worker process as they go)."""
StageCallback = Callable[[Stage, int, int, "float | None"], None]
"""`measure`'s reports: (stage, index, count, seconds)."""
PROGRESS_MARK = "\x1edeskgen-bench-progress "
"""Starts the worker's progress lines on its stdout (anything else there is ignored)."""

PHOTO_FILE = "photo.png"
MASK_FILE = "mask.png"
MASK_SUFFIX = ".mask"
"""A run's mask is ``<image stem>.mask.png`` (`GenerationResult.save`'s ``mask=True``)."""
BEFORE_AFTER_PREFIX = "before-after-"
"""``deskgen compare`` writes ``before-after-<image stem>.png`` for masked runs."""
_RESERVED = frozenset({"photo", "mask", "sheet", "report", "bench"})
"""File stems of the bench folder's own files: no run's image may take them."""


def run_bench(
    config: BenchConfig,
    *,
    out: str | os.PathLike[str],
    on_row: RowCallback | None = None,
    on_progress: ProgressCallback | None = None,
) -> BenchReport:
    """Measure every configuration of ``config`` on the same photo, prompt and seed.

    ``on_row`` gets each configuration's row as it finishes; ``on_progress`` a `BenchProgress`
    as each starts, has loaded and finishes each warm-up and measured run.

    Writes into ``out``: ``photo.png`` (the photo as run), ``mask.png`` (the config's mask, at
    the photo's size), one PNG per configuration (its first measured image, with its generation
    record; a masked run's mask beside it as ``<stem>.mask.png``), and
    ``bench.json``/``bench.md``/``bench.csv`` (`BenchReport.save`). A configuration that fails
    (bad options, out of memory, a crash when isolated) gets a row with its error; the others
    still run. A masked configuration whose backend takes no masks is not loaded: its row says
    so. With ``mask: auto`` the desk is found once, before the runs (on the CPU), and every run
    gets that mask.

    Raises:
        ImageInputError: the photo or the config's mask can't be read, or is no mask for it
            (another aspect ratio, all black or all white); ``mask: auto`` found nothing.
        ModelNotFoundError, ModelLoadError: the segmentation model of ``mask: auto``.
        ConfigError: ``out`` is a file.
    """
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{str(folder)!r} is a file: give a folder for the bench's outputs.")
    folder.mkdir(parents=True, exist_ok=True)
    photo = None
    if config.image is not None:
        photo, info = load_image(config.image)
        atomic_write(folder / PHOTO_FILE, lambda fh: photo.save(fh, format="PNG"))
        found_mask = _config_mask(config, photo, info, folder)
    else:
        found_mask = None
    rows: list[BenchRow] = []
    local_paths = config.local_paths()
    names = _file_names([entry.name for entry in config.runs])
    for number, (entry, name) in enumerate(zip(config.runs, names, strict=True), 1):
        image_path = folder / f"{name}.png"
        stages = _stage_reporter(on_progress, number, len(config.runs), entry.name)
        shared = found_mask if config.shares_mask(entry) else None
        refusal = _mask_refusal(config, entry)
        if refusal is not None:
            row = _stub(entry).model_copy(update={"error": refusal})
        elif config.isolate:
            row = _measure_isolated(
                config, number - 1, image_path, progress=stages, found_mask=shared
            )
        else:
            row = measure(config, entry, image_path, progress=stages, found_mask=shared)
        row = _scrub(row, local_paths)
        rows.append(row)
        if on_row is not None:
            on_row(number, len(config.runs), row)
    _add_quality(config, rows, photo, folder)
    report = BenchReport(
        rows=rows,
        config=config.public(),
        environment=environment(rows),
        photo=PHOTO_FILE if photo is not None else None,
        mask=MASK_FILE if found_mask is not None else None,
        deskgen_version=__version__,
        created_at=datetime.now(timezone.utc),
    )
    report.save(folder)
    return report


def _config_mask(config: BenchConfig, photo: Any, info: Any, folder: Path) -> str | None:
    """The config's mask, read (a mask image) or found (``auto``, on the CPU) once, checked
    against the photo and written to ``mask.png``; its path, or ``None`` when no run uses the
    config's mask. Before the runs: a bad mask fails the bench, not each run after loading."""
    from .._masking import read_mask

    (folder / MASK_FILE).unlink(missing_ok=True)  # an earlier bench's
    users = [e for e in config.runs if e.mask is None and config.mask_for(e) is not None]
    if not users:
        return None
    inputs = read_mask(config.request_for(users[0]), photo, info, device="cpu")
    mask = inputs.mask
    assert mask is not None  # the request is masked
    atomic_write(folder / MASK_FILE, lambda fh: mask.save(fh, format="PNG"))
    return str(folder / MASK_FILE)


def _mask_refusal(config: BenchConfig, entry: BenchEntry) -> str | None:
    """Why ``entry`` can't run its mask (its backend's profile lacks ``masks``), or ``None``."""
    if config.mask_for(entry) is None:
        return None
    from .._registry import backends_with, either, get_backend_class

    try:
        backend = get_backend_class(entry.backend, check_installed=False)
    except DeskgenError:
        return None  # an unknown backend: its run says so
    if backend.profile.masks:
        return None
    return (
        f"UnsupportedOperationError: the {entry.backend!r} backend takes no mask, so it can't "
        f"keep the room: give this run use_mask: false (it then changes the whole photo), or "
        f"compare {either(backends_with('masks'))}."
    )


def _stage_reporter(
    on_progress: ProgressCallback | None, number: int, total: int, label: str
) -> StageCallback | None:
    if on_progress is None:
        return None

    def report(stage: Stage, index: int, count: int, seconds: float | None) -> None:
        on_progress(BenchProgress(number, total, label, stage, index, count, seconds))

    return report


def measure(
    config: BenchConfig,
    entry: BenchEntry,
    image_path: Path,
    *,
    progress: StageCallback | None = None,
    found_mask: str | None = None,
) -> BenchRow:
    """Load ``entry``'s generator in this process, warm it up, time its repeats and
    save the first measured image to ``image_path`` (and its mask beside it). An exception (a
    deskgen error, or one a backend let through) becomes the row's error. ``progress`` hears
    of each stage; ``found_mask`` is the config's ``auto`` mask, found once (`request_for`)."""
    from .._generator import DeskGenerator

    def report(stage: Stage, index: int = 0, count: int = 0, seconds: float | None = None) -> None:
        if progress is not None:
            progress(stage, index, count, seconds)

    def timed(
        gen: DeskGenerator, request: GenerationRequest, stage: Stage, index: int, count: int
    ) -> GenerationResult:
        started = time.perf_counter()
        result = gen.generate(request)
        report(stage, index, count, time.perf_counter() - started)
        return result

    base = _stub(entry)
    try:
        request = config.request_for(entry, found_mask=found_mask)
        report("start")
        with DeskGenerator(
            entry.backend,
            model=entry.model,
            device=entry.device or config.device,
            dtype=entry.dtype or config.dtype,
            memory=entry.memory,
            **entry.options,
        ) as gen:
            base.model = public_model_name(gen.model)
            report("loaded", seconds=gen.load_seconds)
            warmup = config.warmup if entry.warmup is None else entry.warmup
            repeats = config.repeats if entry.repeats is None else entry.repeats
            for i in range(warmup):
                timed(gen, request, "warmup", i + 1, warmup)
            results = [timed(gen, request, "repeat", i + 1, repeats) for i in range(repeats)]
            memory = gen.memory_report()
            loras = [lora.name for lora in gen.loras]
            speed = list(getattr(gen.backend, "performance", []))
            load_seconds = gen.load_seconds
        first = results[0]
        first.save(image_path, index=0, mask=first.mask is not None)
    except Exception as exc:  # deskgen's errors, and anything a backend let through
        return base.model_copy(update={"error": f"{type(exc).__name__}: {exc}"})
    quantized = [
        f"{name} {part.quantization}"
        for name, part in sorted(memory.components.items())
        if part.quantization
    ]
    phases = ("control", "mask", "encode", "denoise", "decode")
    return base.model_copy(
        update={
            "mode": _mode(first.backend, first.mode, bool(first.controls)),
            "width": first.width,
            "height": first.height,
            "steps": first.denoising_steps,
            "scheduler": first.scheduler,
            "device": first.device,
            "dtype": first.dtype,
            "load_seconds": load_seconds,
            # the time of the images asked for (a safety checker may leave some out)
            "seconds_per_image": [r.timings.total / r.request.num_images for r in results],
            "phase_seconds": {
                phase: statistics.median(getattr(r.timings, phase) for r in results)
                for phase in phases
            },
            "peak_memory_bytes": max(r.peak_memory.bytes for r in results),
            "memory_kind": first.peak_memory.kind,
            "load_peak_bytes": memory.load_peak.bytes if memory.load_peak else None,
            "quantization": ", ".join(quantized) or None,
            "loras": loras,
            "speed": speed,
            "cost_usd": (
                first.cost_usd / first.request.num_images if first.cost_usd is not None else None
            ),
            "image": image_path.name,
            "mask": (
                image_path.with_name(f"{image_path.stem}{MASK_SUFFIX}.png").name
                if first.mask is not None
                else None
            ),
            "warnings": sorted(set(first.warnings)),
        }
    )


def _stub(entry: BenchEntry) -> BenchRow:
    """A row with what is known before running ``entry``."""
    return BenchRow(
        label=entry.name,
        backend=entry.backend,
        model=public_model_name(entry.model) if entry.model else "(default)",
        preset=entry.options.get("preset"),
        options=entry.public_options(),
    )


def _mode(backend: str, mode: str, controls: bool) -> BenchMode:
    if mode == "inpaint":
        return "inpaint"  # the room kept, whatever steered the masked part
    if controls:
        return "controlnet"
    from .._registry import get_backend_class

    modes = get_backend_class(backend, check_installed=False).profile.modes
    if mode == "edit" or (mode == "img2img" and "edit" in modes):
        return "edit"  # photo edits (the OpenAI API's report theirs as img2img results)
    return "img2img" if mode == "img2img" else "txt2img"


# -- isolation ---------------------------------------------------------------------------------


def _measure_isolated(
    config: BenchConfig,
    index: int,
    image_path: Path,
    *,
    progress: StageCallback | None = None,
    found_mask: str | None = None,
) -> BenchRow:
    """`measure` in a fresh interpreter (``python -m deskgen.bench._worker``): the job goes in
    on stdin (never on disk: options may hold keys), its progress comes back as lines on its
    stdout (`PROGRESS_MARK`), the row in a file."""
    import signal  # here, not at `import deskgen`
    import subprocess

    result_path = image_path.with_name(f".{image_path.stem}.row.json")
    result_path.unlink(missing_ok=True)
    job = {
        "config": _plain(config.model_dump()),
        "index": index,
        "image_path": str(image_path),
        "result_path": str(result_path),
        "progress": progress is not None,
        "found_mask": found_mask,
    }
    failed = _stub(config.runs[index])
    # its own session: on a timeout the whole group goes (compile workers included)
    proc = subprocess.Popen(
        [sys.executable, "-m", "deskgen.bench._worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    errors: list[str] = []
    stderr_pipe = proc.stderr
    drain = threading.Thread(target=lambda: errors.append(stderr_pipe.read()), daemon=True)
    drain.start()
    timed_out = threading.Event()

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def stop() -> None:
        if proc.poll() is None:
            timed_out.set()
            kill()

    timer = threading.Timer(config.timeout_s, stop) if config.timeout_s is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(json.dumps(job))
            proc.stdin.close()
        for line in proc.stdout:  # until the worker (and any process it started) is done
            at = line.find(PROGRESS_MARK)
            if progress is not None and at >= 0:
                _relay(progress, line[at + len(PROGRESS_MARK) :])
        proc.wait()
    except BaseException:  # the progress callback raised, or an interrupt: the worker goes too
        kill()
        proc.wait()
        raise
    finally:
        if timer is not None:
            timer.cancel()
    drain.join()
    stderr = "".join(errors)
    if timed_out.is_set():
        for written in (image_path.name, f"{image_path.stem}{MASK_SUFFIX}.png"):
            for leftover in image_path.parent.glob(f".{written}.*.tmp"):
                leftover.unlink(missing_ok=True)
        result_path.unlink(missing_ok=True)
        return failed.model_copy(update={"error": f"stopped after {config.timeout_s:g} s"})
    try:
        if proc.returncode != 0:
            tail = " ".join(stderr.strip().splitlines()[-3:])
            reason = _exit_reason(proc.returncode)
            return failed.model_copy(update={"error": f"the worker {reason}: {tail}".strip()})
        return BenchRow.model_validate_json(result_path.read_text(encoding="utf-8"))
    finally:
        result_path.unlink(missing_ok=True)


def _relay(progress: StageCallback, text: str) -> None:
    """One progress line of a worker, to ``progress`` (a garbled one is skipped)."""
    try:
        data = json.loads(text)
        stage, index, count, seconds = data["stage"], data["index"], data["count"], data["seconds"]
    except (ValueError, KeyError, TypeError):
        return
    if stage in ("start", "loaded", "warmup", "repeat"):
        progress(stage, int(index), int(count), None if seconds is None else float(seconds))


def progress_line(stage: Stage, index: int, count: int, seconds: float | None) -> str:
    """The worker's progress line for a stage (`_relay` reads it back)."""
    data = {"stage": stage, "index": index, "count": count, "seconds": seconds}
    return f"{PROGRESS_MARK}{json.dumps(data)}\n"


def _exit_reason(code: int) -> str:
    if code == -9:
        return "was killed (SIGKILL: out of memory?)"
    if code < 0:
        return f"died of signal {-code}"
    return f"exited with code {code}"


def _scrub(row: BenchRow, paths: dict[str, str]) -> BenchRow:
    """``row`` with the machine's paths in its error and warnings replaced by their names."""

    def clean(text: str) -> str:
        for path, name in paths.items():
            text = text.replace(path, name)
        return text

    return row.model_copy(
        update={
            "error": clean(row.error) if row.error else None,
            "warnings": [clean(w) for w in row.warnings],
        }
    )


def _plain(value: Any) -> Any:
    """JSON data of a model dump, secrets revealed (for the worker's stdin only)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return _plain(value.model_dump())
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


# -- after the runs ----------------------------------------------------------------------------


def _add_quality(config: BenchConfig, rows: list[BenchRow], photo: Any, folder: Path) -> None:
    """Fill the quality columns from the saved images (and masks), or say why they are
    empty."""
    scorer: Any = None
    clip_note: str | None = "no CLIP model given (clip_model=..., --clip-model)"
    if config.clip_model is not None:
        try:
            from ._quality import ClipScorer

            scorer = ClipScorer(config.clip_model)
            clip_note = None
        except DeskgenError as exc:
            clip_note = f"CLIP model not usable: {exc}"
    for index, (row, entry) in enumerate(zip(rows, config.runs, strict=True)):
        if not row.ok or row.image is None:
            continue
        image, _ = load_image(folder / row.image)
        update: dict[str, Any] = {}
        if photo is None or not entry.use_photo:
            update["edge_ssim_note"] = "no photo: txt2img keeps no structure to compare"
            update["masked_ssim_note"] = "no photo: txt2img keeps no room"
        else:
            try:
                from ._quality import edge_ssim

                update["edge_ssim"] = edge_ssim(photo, image)
            except DeskgenError as exc:
                update["edge_ssim_note"] = str(exc)
            update.update(_masked_quality(row, photo, image, folder))
        if scorer is not None:
            prompt = config.request_for(entry).prompt
            update["clip_score"], update["clip_score_note"] = scorer.score(image, prompt)
        else:
            update["clip_score_note"] = clip_note
        rows[index] = row.model_copy(update=update)


def _masked_quality(row: BenchRow, photo: Any, image: Any, folder: Path) -> dict[str, Any]:
    """The edge SSIM outside and inside ``row``'s saved mask, or why not."""
    if row.mask is None:
        return {"masked_ssim_note": "no mask: this run changed the whole photo"}
    try:
        mask, _ = load_image(folder / row.mask)
        from ._quality import masked_edge_ssim

        outside, inside = masked_edge_ssim(photo, image, mask.convert("L"))
    except DeskgenError as exc:
        return {"masked_ssim_note": str(exc)}
    return {"edge_ssim_outside": outside, "edge_ssim_inside": inside}


def environment(rows: list[BenchRow]) -> dict[str, str]:
    """What the numbers were measured on."""
    import platform

    env = {"python": platform.python_version(), "platform": platform.platform(terse=True)}
    for package in ("torch", "diffusers", "transformers", "openai"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            env[package] = importlib.metadata.version(package)
    cpu = _cpu_name()
    env["cpu"] = f"{cpu} ({os.cpu_count()} cores)"
    devices = sorted({row.device for row in rows if row.device})
    gpus = [d for d in devices if d.startswith("cuda")]
    if gpus and importlib.util.find_spec("torch") is not None:
        import torch

        env["gpu"] = torch.cuda.get_device_name(torch.device(gpus[0]))
    env["device"] = env.get("gpu") or f"CPU: {env['cpu']}"
    return env


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    import platform

    return platform.processor() or platform.machine()


def _file_names(labels: list[str]) -> list[str]:
    """Distinct, safe file stems for the labels."""
    names: list[str] = []
    for label in labels:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.").lower() or "run"
        if stem.startswith(BEFORE_AFTER_PREFIX):  # compare's before/after pictures
            stem = f"run-{stem}"
        name, n = stem, 2
        # ``x.mask`` would take run ``x``'s mask file
        while name in names or name in _RESERVED or name.endswith(MASK_SUFFIX):
            name, n = f"{stem}-{n}", n + 1
        names.append(name)
    return names


def write_row(row: BenchRow, path: Path) -> None:
    atomic_write_bytes(path, row.model_dump_json().encode("utf-8"))
