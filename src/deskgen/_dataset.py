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

``engine="ray"`` spreads the images over Ray workers that each build the generator again from
its `GeneratorSpec` (`deskgen._dataset_ray`); this process still writes every file, the same way.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ._exceptions import (
    AuthenticationError,
    ConfigError,
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
    from ._models import GenerationResult

__all__ = [
    "DatasetFailure",
    "DatasetItem",
    "DatasetPlan",
    "DatasetReport",
    "DeskGrid",
    "RayOptions",
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
        return self.items(backend=generator.backend_name, generator_key=generator_key(generator))


def generator_key(generator: DeskGenerator) -> str:
    """What, besides its backend, makes a generator's images: model, dtype and loaded LoRAs."""
    loras = [[lora.name, lora.sha256, lora.weight] for lora in generator.loras]
    return json.dumps([generator.model, generator.dtype, loras])


class RayOptions(BaseModel):
    """How ``generate_dataset(engine="ray")`` spreads a plan over a Ray cluster: ``actors``
    workers, each with its own generator, built once from the caller's `GeneratorSpec`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    actors: int | None = Field(default=None, ge=1)
    """Workers; ``None``: as many as the cluster's GPUs hold (``num_gpus`` each), else 1."""
    num_gpus: float | None = Field(default=None, ge=0)
    """GPUs per worker (a fraction shares one); ``None``: 1 if the cluster has GPUs, else 0."""
    num_cpus: float | None = Field(default=None, ge=0)
    """CPUs per worker; ``None``: Ray Data's default (1)."""
    batch_size: int = Field(default=1, ge=1, le=10_000)
    """Images a worker is handed at a time (each still one request): results come back per
    batch, so 1 streams every image to the disk as soon as it is made."""
    device: str | None = None
    """The workers' device; ``None``: the generator's (``"cuda:N"`` as ``"cuda"``: Ray shows
    each worker only its own GPUs). Not part of the images' keys, unlike the dtype."""
    address: str | None = None
    """The cluster to connect to when Ray is not initialised (``"auto"``, ``"ray://..."``);
    ``None``: start a local one for the run."""
    progress_bars: bool = False
    """Ray Data's own progress bars and execution logs (deskgen's tqdm bar is ``progress``)."""


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
    engine: Literal["local", "ray"] = "local",
    ray: RayOptions | None = None,
) -> DatasetReport:
    """Generate the images of ``plan`` into the ``imagefolder`` at ``out`` (see the module).

    Images already in ``out`` (same prompt, request and seed) are skipped; an item that fails
    is written to ``failures.jsonl`` and the run goes on, except for errors every item would
    hit (a refused API key, a closed generator, a missing extra), which stop it. A
    ``metadata.jsonl`` line cut short by an earlier run (a full disk, a power loss) is removed
    first (the file is rewritten atomically, with a logged warning) and its image made again.

    With ``engine="ray"`` the images still to make are spread with Ray Data over workers that
    each build their own generator once from ``generator.spec`` (`GeneratorSpec`: hub ids are
    loaded where the workers run, local paths must exist there); their PNGs come back to this
    process, which writes the files and lines as they arrive (in the order they are done), as
    the local engine does: a run of either engine resumes the other's. If Ray is not
    initialised, a local Ray is started (or ``ray.address`` connected to) and shut down after
    the run. A worker whose generator can't be built, or differs from ``generator`` in what
    keys the images (model, dtype, LoRAs: give ``dtype`` explicitly when the workers' devices
    differ from this one), stops the run with that error.

    Args:
        on_item: called after each image with the item and ``None``, or the error it failed with.
        engine: ``"local"``: one image after the other with ``generator``; ``"ray"``: on a Ray
            cluster (needs the ``ray`` extra).
        ray: the `RayOptions` of ``engine="ray"``.

    Raises:
        AuthenticationError, GeneratorClosedError, MissingDependencyError: see above
            (``MissingDependencyError`` too for ``engine="ray"`` without Ray installed).
        ConfigError: an unknown ``engine``, ``ray`` options without ``engine="ray"``, or Ray
            workers whose generator is not ``generator``'s.
    """
    from tqdm.auto import tqdm

    if engine not in ("local", "ray"):
        raise ConfigError(f"engine={engine!r}: use 'local' or 'ray'.")
    if ray is not None and engine != "ray":
        raise ConfigError("ray=RayOptions(...) needs engine='ray'.")

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
    if engine == "ray" and todo:
        from ._dataset_ray import ray_outcomes

        outcomes = ray_outcomes(generator, plan, todo, folder, ray or RayOptions())
    else:
        outcomes = _local_outcomes(generator, plan, todo, folder)
    with (
        tqdm(
            total=len(items), initial=skipped, disable=not progress, unit="image", desc="dataset"
        ) as bar,
        closing(outcomes),  # a Ray run stops its workers when the loop ends early
    ):
        for item, error in outcomes:
            if error is None:
                generated += 1
            else:
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


def _local_outcomes(
    generator: DeskGenerator, plan: DatasetPlan, todo: list[DatasetItem], folder: Path
) -> Generator[tuple[DatasetItem, Exception | None], None, None]:
    """Make ``todo`` one after the other: each item with ``None``, or the error it failed with
    (fatal errors are raised)."""
    for item in todo:
        error: Exception | None = None
        try:
            result = generate_item(generator, plan.request, item)
            result.save(folder / f"{item.key}.png", index=0)
            _append_line(folder / METADATA, metadata_row(item, result))
        except _FATAL:
            raise
        except (DeskgenError, OSError) as exc:
            error = exc
        yield item, error


def generate_item(
    generator: DeskGenerator, request: dict[str, Any], item: DatasetItem
) -> GenerationResult:
    """The one image of ``item``, with the plan's shared ``request`` fields."""
    fields = {**request, "negative_prompt": item.negative_prompt}
    return generator.generate(prompt=item.prompt, seed=item.seed, num_images=1, **fields)


def metadata_row(item: DatasetItem, result: GenerationResult) -> dict[str, Any]:
    """The ``metadata.jsonl`` line of ``item``'s image."""
    return {
        "file_name": f"{item.key}.png",
        "caption": item.caption,
        "prompt": item.prompt,
        "negative_prompt": item.negative_prompt,
        "seed": item.seed,
        # a JSON text, so that every row has the same columns for datasets' imagefolder
        "record": json.dumps(result.record(0), ensure_ascii=False),
    }
