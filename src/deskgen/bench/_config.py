"""What a benchmark runs: `BenchConfig` (the photo, prompt, mask, repeats) and its `BenchEntry` s
(one backend configuration each), from Python or a YAML/TOML/JSON file."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from .._exceptions import ConfigError, MissingDependencyError
from .._generator import _format_validation_error
from .._models import GenerationRequest
from .._planner import MemoryMode
from .._secrets import MASK, SECRET_NAME
from ..masks._settings import DeskMask

__all__ = ["AUTO_MASK", "BenchConfig", "BenchEntry", "load_bench_config"]

_REQUEST_FIELDS = frozenset(GenerationRequest.model_fields) - {
    "image",
    "mask",
    "desk_mask",
    "control_image",
}
AUTO_MASK = "auto"
"""``mask: auto``: the desk and what stands on it, found by a segmentation model."""
_ENTRY_KEYS = frozenset({"backend", "model", "device", "dtype", "memory"})


def mask_value(value: Any, *, key: str = "") -> Any:
    """``value`` as JSON data for a report: secrets (by key name, at any depth, or
    `SecretStr`) as ``***``, local paths by their last part (as generation records keep
    model folders), models and other objects as their JSON fields."""
    from .._record import public_model_name

    if isinstance(value, SecretStr) or (key and SECRET_NAME.search(key) and value is not None):
        return MASK
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): mask_value(v, key=str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_value(v) for v in value]
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        return public_model_name(value) if value else value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)


class BenchEntry(BaseModel):
    """One configuration to measure: a backend, its model and options, and request overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str
    label: str | None = Field(default=None, min_length=1, max_length=80)
    """The name in tables and sheets; ``None``: the backend, with its preset if any."""
    model: str | None = None
    """Hub id or local folder; ``None``: the backend's default model."""
    device: str | None = None
    """``None``: the config's device."""
    dtype: str | None = None
    memory: MemoryMode | None = None
    """Let the memory planner choose (`DeskGenerator`'s ``memory=``)."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Backend options, as `DeskGenerator` takes them: ``preset``, ``quantization``, ``loras``,
    ``compile``, ``controlnet``...; a key such as ``api_key`` is never written to reports."""
    request: dict[str, Any] = Field(default_factory=dict)
    """Request fields for this run only (``steps``, ``strength``, ``guidance_scale``...), over
    the config's."""
    warmup: int | None = Field(default=None, ge=0, le=20)
    """Unmeasured runs for this entry; ``None``: the config's. ``0`` for paid APIs (``openai``),
    where a warm-up is a billed request."""
    repeats: int | None = Field(default=None, ge=1, le=100)
    """Measured runs for this entry; ``None``: the config's."""
    use_photo: bool = True
    """``False``: this run makes the image from the prompt alone (txt2img), e.g. for
    ``hidream`` or ``janus``, which take no photo, beside img2img runs of the same photo."""
    mask: str | None = Field(default=None, min_length=1)
    """This run's own mask instead of the config's: a mask image's path, or ``"auto"`` (this
    run finds the desk itself, with the config's `desk_mask` settings, on every request: its
    times include it, phase ``mask``). ``None``: the config's mask, if any."""
    use_mask: bool = True
    """``False``: this run changes the whole photo (img2img) beside masked runs of it."""

    @model_validator(mode="after")
    def _no_reserved_options(self) -> BenchEntry:
        reserved = sorted(_ENTRY_KEYS & set(self.options))
        if reserved:
            raise ValueError(
                f"options may not set {', '.join(reserved)}: give them as the run's own fields"
            )
        return self

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        preset = self.options.get("preset")
        return f"{self.backend} ({preset})" if preset else self.backend

    def public_options(self) -> dict[str, Any]:
        """The options for reports: secrets masked, local paths by name (`mask_value`)."""
        masked: dict[str, Any] = mask_value(self.options)
        return masked


class BenchConfig(BaseModel):
    """A benchmark: every entry runs the same photo and prompt with the same seed, ``warmup``
    times unmeasured, then ``repeats`` times measured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1)
    negative_prompt: str | None = None
    image: str | None = None
    """The desk photo (a path); ``None``: every entry runs txt2img."""
    request: dict[str, Any] = Field(default_factory=dict)
    """Request fields shared by every entry: ``steps``, ``width``, ``height``, ``strength``,
    ``guidance_scale``, ``long_prompt``..."""
    seed: int = Field(default=0, ge=0)
    warmup: int = Field(default=1, ge=0, le=20)
    """Unmeasured runs first (the first run pays for lazy set-up, CUDA kernels, compilation)."""
    repeats: int = Field(default=3, ge=1, le=100)
    """Measured runs: the table gives their median, min and max."""
    device: str = "auto"
    dtype: str = "auto"
    clip_model: str | None = None
    """A CLIP model (folder or cached hub id, e.g. ``openai/clip-vit-large-patch14``) for the
    prompt-adherence column; ``None``: the column says it was not asked for."""
    isolate: bool = True
    """Run each entry in a fresh Python process: its memory figures are its own, and a crash
    (out of memory) fails that entry only."""
    timeout_s: float | None = Field(default=None, gt=0)
    """Isolated entries taking longer (load included) are stopped and reported as failed."""
    mask: str | None = Field(default=None, min_length=1)
    """Keep the room, change the desk: every run from the photo changes only the masked part
    (mode ``inpaint``). A mask image's path (white: change, black: keep; the photo's size or
    aspect ratio), or ``"auto"``: the desk found once, before the runs, on the CPU
    (`deskgen.masks.find_desk_mask` with `desk_mask`), and given to every run as an image: the
    same mask for every backend, and no run's time includes finding it. Written beside the
    report as ``mask.png``; each run's own mask (its image's ``.mask.png``) too. A run whose
    backend takes no masks (its profile lacks ``masks``) is not loaded: its row says so (give
    it ``use_mask: false`` to compare it unmasked). ``None``: the whole photo changes."""
    desk_mask: DeskMask | None = None
    """How ``"auto"`` masks are found: targets, grow, blur, the segmentation model
    (`deskgen.masks.DeskMask`'s fields). Given without `mask`, the mask is ``"auto"``."""
    runs: list[BenchEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_requests(self) -> BenchConfig:
        if self.timeout_s is not None and not self.isolate:
            raise ValueError("timeout_s stops isolated runs only: leave it out, or isolate")
        self._check_masks()
        for index, entry in enumerate(self.runs):
            fields = {**self.request, **entry.request}
            if "desk_mask" in fields:
                raise ValueError(
                    f"runs[{index}] ({entry.name}): desk_mask is the config's own field (how "
                    "mask: auto finds the mask), not a request field"
                )
            unknown = sorted(set(fields) - _REQUEST_FIELDS)
            if unknown:
                raise ValueError(
                    f"runs[{index}] ({entry.name}): unknown request fields {', '.join(unknown)} "
                    f"(known: {', '.join(sorted(_REQUEST_FIELDS))})"
                )
            try:
                self.request_for(entry)
            except ValidationError as exc:
                problems = _format_validation_error(exc)
                raise ValueError(f"runs[{index}] ({entry.name}): {problems}") from None
        labels = [entry.name for entry in self.runs]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            raise ValueError(
                f"several runs are named {', '.join(twice)}: give each a distinct label"
            )
        return self

    def _check_masks(self) -> None:
        if self.image is None and (self.mask is not None or self.desk_mask is not None):
            raise ValueError("a mask marks what to change in the photo: give image too")
        for index, entry in enumerate(self.runs):
            if entry.mask is None:
                continue
            if self.image is None or not entry.use_photo:
                raise ValueError(
                    f"runs[{index}] ({entry.name}): mask needs the photo (image, use_photo)"
                )
            if not entry.use_mask:
                raise ValueError(f"runs[{index}] ({entry.name}): mask and use_mask=false: give one")
        if (
            self.desk_mask is not None
            and self.mask not in (None, AUTO_MASK)
            and all(entry.mask != AUTO_MASK for entry in self.runs)
        ):
            raise ValueError(
                "desk_mask says how mask: auto finds the mask, but every run has a mask image: "
                "leave out desk_mask, or give mask: auto"
            )

    def mask_for(self, entry: BenchEntry) -> str | None:
        """``entry``'s mask: a mask image's path, ``"auto"`` or ``None`` (unmasked)."""
        if self.image is None or not entry.use_photo or not entry.use_mask:
            return None
        if entry.mask is not None:
            return entry.mask
        if self.mask is not None:
            return self.mask
        return AUTO_MASK if self.desk_mask is not None else None

    def shares_mask(self, entry: BenchEntry) -> bool:
        """Whether ``entry`` runs the config's ``"auto"`` mask, found once for every run."""
        return entry.mask is None and self.mask_for(entry) == AUTO_MASK

    def request_for(self, entry: BenchEntry, *, found_mask: str | None = None) -> GenerationRequest:
        """The request ``entry`` runs (with the photo when there is one, and its mask).
        ``found_mask``: the mask image the config's ``"auto"`` found (`shares_mask`); without
        it, such a request finds the mask itself (``desk_mask``)."""
        fields: dict[str, Any] = {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            **self.request,
            **entry.request,
        }
        if self.image is not None and entry.use_photo:
            fields["image"] = self.image
        mask = self.mask_for(entry)
        if mask == AUTO_MASK and found_mask is not None and self.shares_mask(entry):
            fields["mask"] = found_mask
        elif mask == AUTO_MASK:
            fields["desk_mask"] = self.desk_mask or DeskMask()
        elif mask is not None:
            fields["mask"] = mask
        return GenerationRequest.model_validate(fields)

    def local_paths(self) -> dict[str, str]:
        """The local paths this config names (photo, models, paths in options), each with the
        name reports show instead: to take them out of error messages."""
        from .._record import public_model_name

        found: list[str] = []

        def walk(value: Any) -> None:
            if isinstance(value, BaseModel):
                value = value.model_dump(mode="json")
            if isinstance(value, dict):
                for item in value.values():
                    walk(item)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    walk(item)
            elif isinstance(value, (str, os.PathLike)) and not isinstance(value, SecretStr):
                text = os.fspath(value)
                if text and public_model_name(text) != text:
                    found.append(text)

        walk([self.image, self.mask, self.clip_model, self.desk_mask])
        for entry in self.runs:
            walk([entry.model, entry.mask, entry.options])
        expanded = {os.path.abspath(os.path.expanduser(p)): p for p in found} | {
            p: p for p in found
        }
        # longest first: a folder's path must not be replaced inside a longer file path
        return {
            path: public_model_name(original)
            for path, original in sorted(expanded.items(), key=lambda kv: -len(kv[0]))
        }

    def public(self) -> dict[str, Any]:
        """The config as JSON data for reports: secrets masked, and local paths (photo, models,
        paths in options) by name only, as generation records keep them."""
        data = self.model_dump(mode="json", exclude={"runs"})
        for key in ("image", "mask", "clip_model", "desk_mask"):
            data[key] = mask_value(data[key])
        data["runs"] = [
            {
                **entry.model_dump(mode="json", exclude={"options"}),
                "model": mask_value(entry.model),
                "mask": mask_value(entry.mask),
                "options": entry.public_options(),
            }
            for entry in self.runs
        ]
        return data


def load_bench_config(path: str | os.PathLike[str]) -> BenchConfig:
    """Read a `BenchConfig` from a ``.yaml``/``.yml`` (needs PyYAML), ``.toml`` or ``.json``
    file. Paths inside (photo, models) are taken as they are: relative to the current folder.

    Raises:
        ConfigError: no such file, unreadable, or not a valid config (the message says where).
        MissingDependencyError: a YAML file without PyYAML.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Can't read the bench config {str(file)!r}: {exc}") from exc
    suffix = file.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            try:
                import yaml  # type: ignore[import-untyped,unused-ignore]
            except ImportError as exc:
                raise MissingDependencyError(
                    "YAML bench configs", extra="bench", missing=["pyyaml"]
                ) from exc
            data = yaml.safe_load(text)
        elif suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10
                import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(
                f"{str(file)!r}: write the bench config as .yaml, .toml or .json (by suffix)."
            )
    except (ConfigError, MissingDependencyError):
        raise
    except Exception as exc:  # the parsers' own errors say where
        raise ConfigError(f"{str(file)!r} is not valid {suffix[1:].upper()}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{str(file)!r} holds no mapping: write the config's fields at the top.")
    try:
        return BenchConfig.model_validate(data)
    except ValidationError as exc:
        problems = _format_validation_error(exc, whole="config")
        raise ConfigError(f"Invalid bench config {str(file)!r}: {problems}") from exc
