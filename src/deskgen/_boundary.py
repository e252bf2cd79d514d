"""The facade's boundary: what a backend lets escape untranslated becomes one deskgen error,
chained, with every secret scrubbed from it and what it chains (httpx's ``map_exceptions``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from pydantic import SecretStr

from ._exceptions import DeskgenError, OutOfMemoryError
from ._models import CancelFlag
from ._secrets import scrub, scrub_exception
from .backends._request_memory import HINT as OOM_HINT
from .backends._request_memory import is_out_of_memory

__all__ = ["EitherFlag", "backend_boundary", "sampled_device", "since"]


class EitherFlag:
    """Set when any of the flags is set (a task's cancel and the caller's)."""

    def __init__(self, *flags: CancelFlag | None) -> None:
        self._flags = [f for f in flags if f is not None]

    def is_set(self) -> bool:
        return any(f.is_set() for f in self._flags)


@contextlib.contextmanager
def backend_boundary(
    error: type[DeskgenError], what: str, *, hide: tuple[SecretStr, ...] = ()
) -> Iterator[None]:
    """Translate what a backend let escape untranslated into ``error``, chained; scrub the
    secrets to ``hide`` (the options' secrets) and ``sk-...`` keys from it and what it chains."""
    try:
        yield
    except DeskgenError as exc:
        scrub_exception(exc, hide)
        raise
    except Exception as exc:
        scrub_exception(exc, hide)
        # while generating (loading keeps its ModelLoadError), e.g. from a custom backend
        if issubclass(OutOfMemoryError, error) and is_out_of_memory(exc):
            raise OutOfMemoryError(
                scrub(f"{what}: out of memory ({type(exc).__name__}: {exc}). {OOM_HINT}.", hide)
            ) from exc
        raise error(scrub(f"{what}: {type(exc).__name__}: {exc}", hide)) from exc


def sampled_device(device: str, requirements: tuple[str, ...]) -> str:
    """The device whose memory a backend's loading fills: ``auto`` resolved only for backends
    that run on torch (an API backend's process never imports it)."""
    if "torch" in requirements:  # also checks the device exists (ConfigError otherwise)
        from ._device import resolve_device

        return resolve_device(device)
    return device if device.startswith("cuda") else "cpu"


def since(start: float) -> float:
    return time.perf_counter() - start
