"""What both routes to a desk mask share: the process-wide cache of loaded models (each loaded
once, however many threads ask), reading a model's config into deskgen's errors, and the
sizes photos and maps are worked at. torch and transformers are imported when first used."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Protocol, TypeVar, cast

from PIL import Image

from .._device import resolve_device, resolve_dtype
from .._exceptions import (
    GeneratorClosedError,
    ModelLoadError,
    ModelMismatchError,
    ModelNotFoundError,
)
from .._loading import missing_hub_message
from ._settings import DeskMask

__all__ = [
    "INPUT_SIDE",
    "WORK_SIDE",
    "SharedModel",
    "check_architecture",
    "fit",
    "load_options",
    "model_photo",
    "processor_backend",
    "read_config",
    "release_segmenters",
    "shared_model",
    "standing_note",
]

WORK_SIDE = 512
"""The long side, in pixels, of the maps `find_desk_mask` works on (at most): the label map of
the closed-set route, the box masks of the open-vocabulary route."""

INPUT_SIDE = 1024
"""The long side a photo is scaled down to (at most) before a model's processor sees it."""


class SharedModel:
    """What the routes' loaded models share (`Segmenter`, `Detector`, `BoxSegmenter`): the
    weights on their device, the processor, one call at a time, and closing. Subclasses name
    themselves (``what``) and the function that gets them again (``getter``)."""

    what: ClassVar[str]
    getter: ClassVar[str]

    def __init__(self, loaded: Any, processor: Any, *, name: str, device: str, dtype: Any) -> None:
        self.model: Any = loaded.to(device).eval()
        self.processor: Any = processor
        self.name = name
        self.device = device
        self.dtype = dtype
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self.model is None

    def close(self) -> None:
        """Free the weights (after a running call); later calls raise `GeneratorClosedError`."""
        with self._lock:
            self.model = None

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """One call at a time, without gradients; `GeneratorClosedError` once closed."""
        import torch

        with self._lock, torch.no_grad():
            if self.model is None:
                raise GeneratorClosedError(
                    f"The {self.what} {self.name!r} was closed (release_segmenters()); get it "
                    f"again with {self.getter}()."
                )
            yield


class _Loaded(Protocol):
    @property
    def closed(self) -> bool: ...

    def close(self) -> None: ...


_T = TypeVar("_T", bound=_Loaded)

_MODELS: dict[tuple[Any, ...], _Loaded] = {}
_LOADING: dict[tuple[Any, ...], threading.Lock] = {}
_CACHE_LOCK = threading.Lock()


def shared_model(
    kind: str,
    model: str,
    *,
    device: str,
    dtype: Any,
    revision: str | None,
    load: Callable[[str, Any], _T],
) -> _T:
    """The process-wide ``kind`` of ``model`` on ``device``: ``load(device, dtype)`` on first
    use (once, however many threads ask at the same time), then shared until closed. Keyed by
    kind, model (a folder by its absolute path), revision, device and dtype. ``device="auto"``:
    the best available; ``dtype`` a torch dtype or its name, ``None``: float32.

    Raises:
        ConfigError: an unknown device or dtype.
    """
    import torch

    from .._hub import is_local

    resolved = resolve_device(device)
    if dtype is None:
        dtype = torch.float32
    elif isinstance(dtype, str):
        dtype = resolve_dtype(dtype, resolved)
    name = os.path.abspath(os.path.expanduser(model)) if is_local(model) else model
    key = (kind, name, revision, resolved, dtype)
    with _CACHE_LOCK:
        cached = _MODELS.get(key)
        if cached is not None and not cached.closed:
            return cast(_T, cached)
        loading = _LOADING.setdefault(key, threading.Lock())
    with loading:
        with _CACHE_LOCK:
            cached = _MODELS.get(key)
            if cached is not None and not cached.closed:
                return cast(_T, cached)
        loaded = load(resolved, dtype)
        with _CACHE_LOCK:
            _MODELS[key] = loaded
    return loaded


def release_segmenters() -> None:
    """Close every shared model of both routes (segmenters, detectors, SAMs) and empty the
    cache (their weights are freed)."""
    with _CACHE_LOCK:
        models = list(_MODELS.values())
        _MODELS.clear()
        _LOADING.clear()
    for model in models:
        model.close()


def read_config(
    model: str, source: str, *, local: bool, what: str, working: str, common: dict[str, Any]
) -> Any:
    """``AutoConfig.from_pretrained(source, **common)``, its failures as deskgen's errors
    (``what`` names the model, ``working`` says which models do work).

    Raises:
        ModelMismatchError: no or an unknown ``model_type`` (remote code is never run).
        ModelLoadError: an unreadable folder.
        ModelNotFoundError: a hub id the Hub (or the cache, offline) can't give.
    """
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, **common)
    except ValueError as exc:  # no or an unknown model_type
        raise ModelMismatchError(
            f"{model!r} is not a model transformers knows ({str(exc).splitlines()[0]}). {working}"
        ) from exc
    except OSError as exc:
        if local:
            raise ModelLoadError(f"Could not read the {what} {model!r}: {exc}") from exc
        raise ModelNotFoundError(
            missing_hub_message(model, exc, offline=common.get("local_files_only", False))
        ) from exc


def open_config(
    model: str,
    *,
    what: str,
    hint: str,
    working: str,
    revision: str | None,
    cache_dir: str | None,
    local_files_only: bool,
) -> tuple[bool, str, dict[str, Any], Any]:
    """Where a mask model's files are and its config: ``(local, source, common, config)``,
    ``common`` being what its every ``from_pretrained`` is given (`load_options`).

    Raises:
        ModelMismatchError, ModelLoadError, ModelNotFoundError: as `read_config`.
    """
    from .._loading import weights_source

    local, source = weights_source(model, what=what, hint=hint)
    common = load_options(revision, cache_dir, local_files_only)
    config = read_config(model, source, local=local, what=what, working=working, common=common)
    return local, source, common, config


def load_options(
    revision: str | None, cache_dir: str | None, local_files_only: bool
) -> dict[str, Any]:
    """What every ``from_pretrained`` of a mask model is given (remote code never runs)."""
    return {
        "revision": revision,
        "cache_dir": cache_dir,
        "local_files_only": local_files_only,
        "trust_remote_code": False,
    }


def processor_backend() -> dict[str, Any]:
    """``AutoProcessor.from_pretrained``'s PIL image processors when torchvision is absent
    (transformers would warn)."""
    return {} if importlib.util.find_spec("torchvision") else {"backend": "pil"}


def check_architecture(model: str, config: Any, head: str, working: str) -> None:
    """`ModelMismatchError` when ``config`` names the weights of other heads than ``head``
    (their task's head would be loaded random)."""
    saved = list(getattr(config, "architectures", None) or [])
    if saved and head not in saved:
        raise ModelMismatchError(
            f"{model!r} holds the weights of a {', '.join(saved)}, not of a {head}. {working}"
        )


def model_photo(image: Image.Image) -> Image.Image:
    """``image`` in RGB, at most `INPUT_SIDE` pixels on its long side: what a model's processor
    is given."""
    photo = image.convert("RGB")
    if max(photo.size) > INPUT_SIDE:
        photo = photo.resize(fit(photo.size, INPUT_SIDE), Image.Resampling.BILINEAR)
    return photo


def fit(size: tuple[int, int], side: int) -> tuple[int, int]:
    """``size`` scaled down (never up) so its long side is at most ``side``."""
    width, height = size
    scale = min(1.0, side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def standing_note(settings: DeskMask, targets: list[str]) -> str:
    """The nothing-found message's note on ``on_surface`` (when it played a part)."""
    if settings.on_surface and any(name in settings.surfaces for name in targets):
        return (
            " (objects count only where they stand on a surface: on_surface=False keeps them "
            "wherever they are)"
        )
    return ""
