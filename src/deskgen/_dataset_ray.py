"""``generate_dataset(engine="ray")``: a plan's images made by Ray workers, written here.

The images still to make go to Ray Data (``from_items(...).map_batches(_Worker, ...)``) over a
fixed pool of actors; each actor builds its own `DeskGenerator` once, from the caller's
`GeneratorSpec` (the weights load where the actor runs: nothing loaded is pickled), checks that
it keys images as the caller's does (backend, model, dtype, LoRAs), and answers per item the
PNG exactly as `GenerationResult.save` writes it (record embedded) with its metadata line, or
the error (class name, message). This process writes each file and appends each line as the
answers stream in, through the same code as the local engine, so the folder, its resume and its
failures are the same whichever engine made it. Ray is imported only here, when used.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import re
import traceback
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _exceptions
from ._dataset import (
    _FATAL,
    METADATA,
    DatasetItem,
    DatasetPlan,
    RayOptions,
    _append_line,
    generate_item,
    generator_key,
    metadata_row,
)
from ._exceptions import ConfigError, DeskgenError, MissingDependencyError
from ._record import atomic_write_bytes, png_bytes

if TYPE_CHECKING:
    from ._generator import DeskGenerator
    from ._generator_spec import GeneratorSpec

__all__ = ["ray_outcomes"]

_log = logging.getLogger(__name__)
_COLUMNS = ("key", "png", "row", "error", "message", "detail", "fatal", "trace")
_QUIET = {"enable_progress_bars": False, "print_on_execution_start": False}
"""Ray Data's `DataContext` settings for a quiet run (restored after it)."""

Outcomes = Generator[tuple[DatasetItem, "Exception | None"], None, None]


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MissingDependencyError(
            "generate_dataset(engine='ray')", extra="ray", missing=[exc.name or "ray"]
        ) from exc
    return ray


def ray_outcomes(
    generator: DeskGenerator,
    plan: DatasetPlan,
    todo: list[DatasetItem],
    folder: Path,
    options: RayOptions,
) -> Outcomes:
    """Make ``todo`` on Ray workers and write each image and its metadata line into ``folder``
    as it comes back: each item with ``None``, or the error it failed with (fatal errors, and
    errors building a worker's generator, are raised). Close the generator returned to stop
    the workers early.

    Raises:
        MissingDependencyError: Ray is not installed (raised at once, not when iterated).
    """
    ray = _import_ray()
    spec = generator.spec
    expected = [generator.backend_name, generator_key(generator)]
    return _outcomes(ray, spec, expected, plan, todo, folder, options)


def _outcomes(
    ray: Any,
    spec: GeneratorSpec,
    expected: list[str],
    plan: DatasetPlan,
    todo: list[DatasetItem],
    folder: Path,
    options: RayOptions,
) -> Outcomes:
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=options.address, include_dashboard=False, logging_level=logging.WARNING)
    context = ray.data.DataContext.get_current()
    saved = {name: getattr(context, name) for name in _QUIET}
    data_logger = logging.getLogger("ray.data")
    level = data_logger.level
    rows: Any = None
    try:
        if not options.progress_bars:
            for name, value in _QUIET.items():
                setattr(context, name, value)
            data_logger.setLevel(max(level, logging.WARNING))  # its warnings still show
            with contextlib.suppress(Exception):  # "Progress bars disabled": as asked
                from ray.util.debug import log_once

                log_once("ray_data_progress_manager_disabled")
        gpus = float(ray.cluster_resources().get("GPU", 0))
        num_gpus = options.num_gpus if options.num_gpus is not None else (1.0 if gpus else 0.0)
        actors = options.actors or (max(1, int(gpus // num_gpus)) if gpus and num_gpus else 1)
        device = options.device or re.sub(r"^cuda:\d+$", "cuda", spec.device)
        by_key = {item.key: item for item in todo}
        dataset = ray.data.from_items([{"item": item.model_dump_json()} for item in todo])
        results = dataset.map_batches(
            _Worker,
            fn_constructor_kwargs={
                "spec": spec,
                "expected": expected,
                "request": plan.request,
                "device": device,
            },
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=num_gpus,
            num_cpus=options.num_cpus,
            batch_size=options.batch_size,
            batch_format="numpy",
        )
        rows = iter(results.iter_rows())
        for row in rows:
            item = by_key[str(row["key"])]
            error = _error(row)
            if row["fatal"] and error is not None:
                if row["trace"]:
                    _log.error("On a Ray worker, for %s:\n%s", item.key, row["trace"])
                raise error
            if error is None:
                try:  # as the local engine: the image, then its line
                    atomic_write_bytes(folder / f"{item.key}.png", bytes(row["png"]))
                    _append_line(folder / METADATA, json.loads(row["row"]))
                except OSError as exc:
                    error = exc
            yield item, error
    finally:
        with contextlib.suppress(Exception):
            if rows is not None and hasattr(rows, "close"):
                rows.close()  # stops the execution: the actors go
        for name, value in saved.items():
            setattr(context, name, value)
        data_logger.setLevel(level)
        if started_here:
            ray.shutdown()


def _error(row: dict[str, Any]) -> Exception | None:
    """The worker's error of ``row`` as an exception of its class here (by name: deskgen's
    errors and Python's; another class becomes a `DeskgenError` subclass of that name)."""
    name = str(row["error"])
    if not name:
        return None
    found = getattr(_exceptions, name, None) or getattr(builtins, name, None)
    cls: type[Exception] = (
        found
        if isinstance(found, type) and issubclass(found, Exception)
        else type(name, (DeskgenError,), {"__module__": __name__})
    )
    error = cls.__new__(cls)  # not __init__: some take other arguments than the message
    error.args = (str(row["message"]),)
    error.__dict__.update(json.loads(row["detail"]))
    return error


class _Worker:
    """A Ray Data actor: one generator, built once; answers a batch of items with a row each."""

    def __init__(
        self, *, spec: GeneratorSpec, expected: list[str], request: dict[str, Any], device: str
    ) -> None:
        self._request = request
        self._generator: DeskGenerator | None = None
        self._broken: dict[str, Any] | None = None
        try:
            self._generator = spec.build(device=device)
            got = [self._generator.backend_name, generator_key(self._generator)]
            if got != expected:
                raise ConfigError(_mismatch(got, expected))
        except Exception as exc:  # every item would fail: each answers it, the run stops
            self._broken = _error_row("", exc, fatal=True)
            if self._generator is not None:
                self._generator.close()
                self._generator = None

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {column: [] for column in _COLUMNS}
        for text in batch["item"]:
            item = DatasetItem.model_validate_json(str(text))
            row = self._make(item)
            for column in _COLUMNS:
                out[column].append(row[column])
        return out

    def _make(self, item: DatasetItem) -> dict[str, Any]:
        if self._broken is not None or self._generator is None:
            return {**(self._broken or {}), "key": item.key}
        try:
            result = generate_item(self._generator, self._request, item)
            png = png_bytes(result, 0)
            row = json.dumps(metadata_row(item, result), ensure_ascii=False)
        except _FATAL as exc:
            return _error_row(item.key, exc, fatal=True)
        except (DeskgenError, OSError) as exc:
            return _error_row(item.key, exc, fatal=False)
        except Exception as exc:  # the local engine would raise it: a bug, not the item's
            return _error_row(item.key, exc, fatal=True, trace=traceback.format_exc())
        return _row(item.key, png=png, row=row)


def _row(key: str, **values: Any) -> dict[str, Any]:
    """One answer; every column always set (no nulls: Arrow keeps one type per column)."""
    empty: dict[str, Any] = {"png": b"", "row": "", "error": "", "message": "", "detail": "{}"}
    return {**empty, "fatal": False, "trace": "", **values, "key": key}


def _error_row(key: str, exc: Exception, *, fatal: bool, trace: str = "") -> dict[str, Any]:
    detail = {}
    for name, value in vars(exc).items():
        with contextlib.suppress(TypeError, ValueError):
            if not name.startswith("_"):
                detail[name] = json.loads(json.dumps(value))
    return _row(
        key,
        error=type(exc).__name__,
        message=str(exc),
        detail=json.dumps(detail),
        fatal=fatal,
        trace=trace,
    )


def _mismatch(got: list[str], expected: list[str]) -> str:
    """What differs between a worker's generator and the caller's, for the error message."""
    (got_backend, got_key), (want_backend, want_key) = got, expected
    names = ("model", "dtype", "LoRAs (name, SHA-256, weight)")
    parts = []
    if got_backend != want_backend:
        parts.append(f"backend {got_backend!r}, not {want_backend!r}")
    for name, mine, theirs in zip(names, json.loads(got_key), json.loads(want_key), strict=True):
        if mine != theirs:
            parts.append(f"{name} {mine!r}, not {theirs!r}")
    return (
        f"The generator a Ray worker built differs from the one given: {'; '.join(parts)}. Its "
        "images would not match their keys: build the generator with what differs given "
        "explicitly (e.g. dtype='bfloat16' when the workers' devices differ from this one)."
    )
