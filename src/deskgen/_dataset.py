"""Datasets of generated desks, for training a LoRA on them (the seed's distillation plan).

`generate_dataset` runs a `DatasetPlan` (prompts and/or a grid of `DeskSpec` variations, some
images of each, seeds fixed by the plan) through any `DeskGenerator` and writes a Hugging Face
``imagefolder``::

    OUT/
      dataset.json          each run's plan and generator (model, dtype, LoRAs), for the record
      train/
        metadata.jsonl      one line per image: file_name, caption, prompt, seed, record
        3f2a...e1.png       each PNG also carries its generation record
      failures.jsonl        the last run's failed items: what and why (retried by the next run)

``datasets.load_dataset("imagefolder", data_dir=OUT)`` reads it, and so does
`deskgen.train_lora`. Every image's name is a digest of what makes it (prompt, request, seed,
and the generator's model, dtype and LoRA files), so a rerun skips what is done, also after the
plan grew, and a rerun with another model or LoRA adds its own images; images are written
atomically and their metadata line only after the image, so an interrupted run leaves nothing
half-made. Captions are written with their image: a new ``caption_prefix`` applies to new
images only.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ._exceptions import (
    AuthenticationError,
    DeskgenError,
    GeneratorClosedError,
    MissingDependencyError,
)
from ._models import GenerationRequest
from ._record import atomic_write_bytes, public_model_name
from ._version import __version__
from .prompts._spec import DeskSpec

if TYPE_CHECKING:
    from ._generator import DeskGenerator

__all__ = [
    "DatasetFailure",
    "DatasetItem",
    "DatasetPlan",
    "DatasetReport",
    "DeskGrid",
    "generate_dataset",
    "read_metadata",
]

METADATA = "metadata.jsonl"
SPLIT = "train"
_PER_REQUEST = {"prompt", "image", "mask", "seed", "num_images", "image_sha256", "mask_sha256"}
_FATAL = (AuthenticationError, GeneratorClosedError, MissingDependencyError)
"""Errors that every further item would hit too: they stop the run."""
_log = logging.getLogger(__name__)


class DeskGrid(BaseModel):
    """Variations of one `DeskSpec`: every combination of the values given per field.

    ```python
    DeskGrid(
        base=DeskSpec(add=["a monitor light bar"]),
        vary={"style": ["scandinavian", "industrial"], "lighting": ["daylight", "warm lamp"]},
    )  # 4 specs
    ```
    """

    model_config = ConfigDict(extra="forbid")

    base: DeskSpec = Field(default_factory=DeskSpec)
    vary: dict[str, list[Any]] = Field(default_factory=dict)

    @field_validator("vary")
    @classmethod
    def _fields(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        unknown = sorted(set(value) - set(DeskSpec.model_fields))
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)} not DeskSpec field(s); vary some of: "
                + ", ".join(DeskSpec.model_fields)
            )
        empty = [name for name, values in value.items() if not values]
        if empty:
            raise ValueError(f"no values to vary for {', '.join(empty)}")
        return value

    def specs(self) -> list[DeskSpec]:
        base = self.base.model_dump()
        names = list(self.vary)
        return [
            DeskSpec.model_validate(base | dict(zip(names, values, strict=True)))
            for values in itertools.product(*(self.vary[n] for n in names))
        ]


class DatasetItem(BaseModel):
    """One image a plan asks for."""

    model_config = ConfigDict(frozen=True)

    key: str
    """Digest of what makes the image (prompt, negative prompt, request, seed): its file stem."""
    prompt: str
    negative_prompt: str | None
    seed: int
    caption: str


class DatasetPlan(BaseModel):
    """What `generate_dataset` makes: each prompt, and each spec of the grid, ``images_per_prompt``
    times with seeds ``seed``, ``seed + 1``...; ``request`` holds the fields every request shares.
    """

    model_config = ConfigDict(extra="forbid")

    prompts: list[str | DeskSpec] = Field(default_factory=list)
    """Texts, or `DeskSpec` s rendered for the generator's backend."""
    grid: DeskGrid | None = None
    images_per_prompt: int = Field(default=1, ge=1, le=10_000)
    seed: int = Field(default=0, ge=0, le=2**32)
    """Image ``k`` of every prompt gets seed ``seed + k``."""
    request: dict[str, Any] = Field(default_factory=dict)
    """`GenerationRequest` fields for every image, e.g. ``{"steps": 30, "loras": {...}}``."""
    caption_prefix: str | None = None
    """Put before every caption, e.g. the trigger word the LoRA trained on them should learn."""

    @field_validator("request")
    @classmethod
    def _request_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(set(value) & _PER_REQUEST)
        if taken:
            raise ValueError(
                f"{', '.join(taken)} can't be shared: the plan sets prompts and seeds itself"
            )
        unknown = sorted(set(value) - set(GenerationRequest.model_fields))
        if unknown:
            raise ValueError(f"{', '.join(unknown)} not GenerationRequest field(s)")
        GenerationRequest.model_validate({"prompt": "x", **value})
        return value

    @model_validator(mode="after")
    def _something(self) -> DatasetPlan:
        if not self.prompts and self.grid is None:
            raise ValueError("give prompts, a grid, or both")
        return self

    def items(self, *, backend: str, generator_key: str = "") -> list[DatasetItem]:
        """Every image of the plan, in order, its prompts rendered for ``backend``; the same
        prompt twice gives its images once. ``generator_key`` names what else makes the images
        (model, dtype, LoRA files): part of every item's key."""
        texts: list[tuple[str, str | None]] = []
        for entry in [*self.prompts, *(self.grid.specs() if self.grid else [])]:
            if isinstance(entry, DeskSpec):
                rendered = entry.render(backend=backend)
                texts.append((rendered.prompt, rendered.negative_prompt))
            else:
                texts.append((entry, None))
        shared = json.dumps(self.request, sort_keys=True, default=str)
        items: list[DatasetItem] = []
        seen: set[str] = set()
        for prompt, spec_negative in texts:
            negative = self.request.get("negative_prompt", spec_negative)
            caption = f"{self.caption_prefix}, {prompt}" if self.caption_prefix else prompt
            for k in range(self.images_per_prompt):
                seed = self.seed + k
                identity = json.dumps([backend, generator_key, prompt, negative, shared, seed])
                key = hashlib.sha256(identity.encode()).hexdigest()[:20]
                if key in seen:
                    continue
                seen.add(key)
                items.append(
                    DatasetItem(
                        key=key, prompt=prompt, negative_prompt=negative, seed=seed, caption=caption
                    )
                )
        return items

    def items_for(self, generator: DeskGenerator) -> list[DatasetItem]:
        """The plan's images as ``generator`` makes them: keyed by its backend, model, dtype and
        loaded LoRAs (file digests and weights) too."""
        loras = [[lora.name, lora.sha256, lora.weight] for lora in generator.loras]
        generator_key = json.dumps([generator.model, generator.dtype, loras])
        return self.items(backend=generator.backend_name, generator_key=generator_key)


class DatasetFailure(BaseModel):
    key: str
    prompt: str
    seed: int
    error: str
    """The exception's class name, e.g. ``ContentPolicyError``."""
    message: str


class DatasetReport(BaseModel):
    """What one `generate_dataset` run did."""

    out: Path
    planned: int
    generated: int
    skipped: int
    """Already there from an earlier run."""
    failures: list[DatasetFailure] = Field(default_factory=list)
    seconds: float

    @property
    def complete(self) -> bool:
        return self.generated + self.skipped == self.planned


def read_metadata(out: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a dataset's ``metadata.jsonl`` whose image exists (a line cut short by an
    interrupted run is ignored)."""
    folder = Path(out) / SPLIT
    rows = []
    for row in _read_lines(folder / METADATA):
        path = inside(folder, str(row.get("file_name", "")))
        if path is not None and path.is_file():
            rows.append(row)
    return rows


def inside(folder: Path, name: str) -> Path | None:
    """``folder / name`` if that stays inside ``folder`` (a metadata line can't point at other
    files on the disk with ``../`` or an absolute path), else ``None``."""
    if not name:
        return None
    path = (folder / name).resolve()
    return path if path.is_relative_to(folder.resolve()) else None


def _read_lines(path: Path) -> Iterator[dict[str, Any]]:
    if not path.is_file():
        return
    with path.open("rb") as fh:  # bytes: a line cut inside a character must not stop the rest
        for line in fh:
            row = _row(line)
            if row is not None:  # else the last line of an interrupted run
                yield row


def _row(line: bytes) -> dict[str, Any] | None:
    """The JSON object on ``line``, or ``None`` if it is not one (cut short, not UTF-8)."""
    try:
        row = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return row if isinstance(row, dict) else None


def _repair_metadata(path: Path) -> int:
    """Rewrite ``path`` without its lines that are not whole JSON objects (a line cut short by
    a full disk or a power loss), atomically; the number of lines dropped.

    deskgen's readers skip such a line, but ``datasets``' imagefolder stops at it. The image of
    a dropped line has no line any more, so the run makes it again (and appends its line).
    """
    if not path.is_file():
        return 0
    lines = path.read_bytes().split(b"\n")
    broken = [line for line in lines if line.strip() and _row(line) is None]
    if not broken:
        return 0
    kept = b"".join(line + b"\n" for line in lines if line.strip() and _row(line) is not None)
    atomic_write_bytes(path, kept)
    return len(broken)


def _previous_runs(path: Path) -> list[dict[str, Any]]:
    try:
        runs = json.loads(path.read_text(encoding="utf-8")).get("runs", [])
    except (OSError, json.JSONDecodeError, AttributeError):
        return []
    return [run for run in runs if isinstance(run, dict)] if isinstance(runs, list) else []


def _append_line(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk; a cut-short earlier line is ended first."""
    data = json.dumps(row, ensure_ascii=False) + "\n"
    with path.open("a+b") as fh:
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                data = "\n" + data
        fh.write(data.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def generate_dataset(
    generator: DeskGenerator,
    plan: DatasetPlan,
    out: str | os.PathLike[str],
    *,
    progress: bool = True,
    on_item: Callable[[DatasetItem, Exception | None], None] | None = None,
) -> DatasetReport:
    """Generate the images of ``plan`` into the ``imagefolder`` at ``out`` (see the module).

    Images already in ``out`` (same prompt, request and seed) are skipped; an item that fails
    is written to ``failures.jsonl`` and the run goes on, except for errors every item would
    hit (a refused API key, a closed generator, a missing extra), which stop it. A
    ``metadata.jsonl`` line cut short by an earlier run (a full disk, a power loss) is removed
    first (the file is rewritten atomically, with a logged warning) and its image made again.

    Args:
        on_item: called after each image with the item and ``None``, or the error it failed with.

    Raises:
        AuthenticationError, GeneratorClosedError, MissingDependencyError: see above.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    folder = Path(out) / SPLIT
    folder.mkdir(parents=True, exist_ok=True)
    items = plan.items_for(generator)
    run = {
        "deskgen_version": __version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "backend": generator.backend_name,
        "model": public_model_name(generator.model),
        "dtype": generator.dtype,
        "loras": [
            lora.model_dump(mode="json", include={"name", "weight", "sha256", "trigger_words"})
            | {"file": Path(lora.path).name}
            for lora in generator.loras
        ],
        "plan": plan.model_dump(mode="json"),
    }
    info_path = Path(out) / "dataset.json"
    runs = [*_previous_runs(info_path), run]  # a folder may hold images of several runs
    text = json.dumps({"runs": runs}, indent=2, ensure_ascii=False).encode("utf-8")
    atomic_write_bytes(info_path, text)
    dropped = _repair_metadata(folder / METADATA)
    if dropped:
        _log.warning(
            "%s: dropped %d line(s) cut short by an interrupted run (datasets' imagefolder "
            "would stop at them); their images are made again.",
            folder / METADATA,
            dropped,
        )
    done = {row["file_name"] for row in read_metadata(out)}
    todo = [item for item in items if f"{item.key}.png" not in done]
    skipped = len(items) - len(todo)
    failures: list[DatasetFailure] = []
    generated = 0
    with tqdm(
        total=len(items), initial=skipped, disable=not progress, unit="image", desc="dataset"
    ) as bar:
        for item in todo:
            error: Exception | None = None
            try:
                _make(generator, plan, item, folder)
                generated += 1
            except _FATAL:
                raise
            except (DeskgenError, OSError) as exc:
                error = exc
            if error is not None:
                failure = DatasetFailure(
                    key=item.key,
                    prompt=item.prompt,
                    seed=item.seed,
                    error=type(error).__name__,
                    message=str(error),
                )
                failures.append(failure)
                _append_line(Path(out) / "failures.jsonl", failure.model_dump(mode="json"))
            bar.update(1)
            if on_item is not None:
                on_item(item, error)
    # failures.jsonl lists what is still missing: this run's failures (appended as they came,
    # for a crash; now rewritten so that items done since are gone)
    lines = "".join(json.dumps(f.model_dump(mode="json")) + "\n" for f in failures)
    data = lines.encode("utf-8")
    atomic_write_bytes(Path(out) / "failures.jsonl", data)
    return DatasetReport(
        out=Path(out),
        planned=len(items),
        generated=generated,
        skipped=skipped,
        failures=failures,
        seconds=time.perf_counter() - started,
    )


def _make(generator: DeskGenerator, plan: DatasetPlan, item: DatasetItem, folder: Path) -> None:
    fields = {**plan.request, "negative_prompt": item.negative_prompt}
    result = generator.generate(prompt=item.prompt, seed=item.seed, num_images=1, **fields)
    name = f"{item.key}.png"
    result.save(folder / name, index=0)
    row = {
        "file_name": name,
        "caption": item.caption,
        "prompt": item.prompt,
        "negative_prompt": item.negative_prompt,
        "seed": item.seed,
        # a JSON text, so that every row has the same columns for datasets' imagefolder
        "record": json.dumps(result.record(0), ensure_ascii=False),
    }
    _append_line(folder / METADATA, row)
