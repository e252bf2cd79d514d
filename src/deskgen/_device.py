"""Device and dtype resolution, and peak-memory measurement (torch is imported lazily)."""

from __future__ import annotations

import os
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from ._exceptions import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DtypeName",
    "PeakMemorySampler",
    "available_bytes",
    "dtype_name",
    "free_accelerator_memory",
    "resolve_device",
    "resolve_dtype",
]

DtypeName = Literal["auto", "float32", "float16", "bfloat16"]


def resolve_device(device: str) -> str:
    """Turn ``"auto"`` into the best available device and check an explicit one exists."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind = device.split(":", 1)[0]
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={device!r} was asked for but CUDA is not available to torch here "
                f"(torch {torch.__version__}). Install a CUDA build of torch, or use device='cpu' "
                "or device='auto'."
            )
        try:
            index = int(device.split(":", 1)[1]) if ":" in device else 0
        except ValueError:
            raise ConfigError(f"Unknown device {device!r}: use 'cuda' or 'cuda:N'.") from None
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible."
            )
        return device
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device='mps' was asked for but MPS is not available here.")
        return device
    if kind == "cpu":
        return "cpu"
    raise ConfigError(f"Unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.")


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``"auto"``: bfloat16 on CUDA GPUs with native support (compute capability 8.0+, Ampere
    and newer), float16 on older GPUs and MPS, float32 on CPU."""
    import torch

    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype == "auto":
        if device.startswith("cuda"):
            major, _ = torch.cuda.get_device_capability(torch.device(device))
            return torch.bfloat16 if major >= 8 else torch.float16
        if device.startswith("mps"):
            return torch.float16
        return torch.float32
    if dtype not in names:
        raise ConfigError(
            f"Unknown dtype {dtype!r}: use 'auto', 'float32', 'float16' or 'bfloat16'."
        )
    return names[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def available_bytes(device: str) -> int | None:
    """Memory a request can still use on ``device``: free GPU memory plus what torch's caching
    allocator holds unused, or the RAM the operating system reports available; ``None`` where it
    can't be known (MPS, an unreadable device)."""
    if device.startswith("cuda"):
        import torch

        try:
            free, _ = torch.cuda.mem_get_info(torch.device(device))
            cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        except (RuntimeError, AssertionError):
            return None
        return int(free + max(cached, 0))
    if device.startswith("cpu"):
        import psutil

        return int(psutil.virtual_memory().available)
    return None


def _rss_bytes() -> int:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with the `local` extra (accelerate)
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return int(psutil.Process(os.getpid()).memory_info().rss)


class PeakMemorySampler:
    """Peak memory over a block of work.

    On CUDA it reads torch's allocator peak (``max_memory_allocated``; reset at entry, so requests
    running at the same time on one GPU share one figure). Elsewhere it samples the process's
    resident set size every ``interval`` seconds from a daemon thread and keeps the maximum.
    """

    def __init__(self, device: str, *, interval: float = 0.02) -> None:
        self.device = device
        self.interval = interval
        self.peak_bytes = 0
        self.kind: Literal["cuda_allocated", "process_rss"] = (
            "cuda_allocated" if device.startswith("cuda") else "process_rss"
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())

    def __enter__(self) -> PeakMemorySampler:
        if self.kind == "cuda_allocated":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_bytes = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.kind == "cuda_allocated":
            import torch

            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())


def free_accelerator_memory(device: str) -> None:
    """Return cached allocator blocks to the driver after weights were dropped."""
    import gc

    gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.startswith("mps") and torch.backends.mps.is_available():
        torch.mps.empty_cache()
