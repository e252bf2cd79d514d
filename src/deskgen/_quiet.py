"""Keeping the libraries deskgen loads with from printing what is no news to a deskgen user.

A library prints nothing unless asked: deskgen's own messages go through `logging`
(``deskgen.*``) and results' ``warnings``. What diffusers, transformers, torchao and
huggingface_hub print on their own while deskgen loads weights is kept back here:

- `quiet_loading` (around every backend's loading, at the facade): no loading progress bars
  ("Loading pipeline components", "Loading weights"; download bars stay), and the import-time
  lines of libraries pulled in by that loading (torchao's "Failed to load ... .so" and "no
  triton" on a CPU, torch's pytree deprecations it triggers, diffusers' "Unable to import
  `torchao` Tensor objects", transformers' torchvision fallback) only at error level;
- `quiet_logs`: diffusers' (and transformers') logging at error level for a block (e.g. a LoRA's
  load report listing every base weight as missing);
- `drop_vae_upcast_notices`: what SDXL pipelines say about their own VAE upcast on every float16
  call, which no caller can act on: diffusers' "modules in AutoencoderKL should be kept in
  float32: []" (twice per call: an empty list, nothing to keep; the message naming modules
  still shows) and its "`upcast_vae` is deprecated" FutureWarning (raised inside diffusers'
  own pipeline), dropped for good.

The user's own settings win outside these blocks: levels and progress bars are restored after.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["drop_vae_upcast_notices", "quiet_loading", "quiet_logs", "silence_import_noise"]

_IMPORT_NOISE_LOGGERS = (
    "torchao",  # "Failed to load .../_C_mxfp8...so", "Detected no triton"
    "torch.utils._pytree",  # "<enum ...> is an Enum subclass ... register_constant()"
    "diffusers.quantizers.torchao.torchao_quantizer",  # "Unable to import `torchao` Tensor..."
    "transformers.utils.import_utils",  # "`CLIPImageProcessor` requires torchvision ..."
    "optimum.quanto",
)


@contextlib.contextmanager
def quiet_logs(*, transformers: bool = False) -> Iterator[None]:
    """diffusers' logging (and transformers', with ``transformers=True``) at error level while
    the block runs; the levels before are restored after."""
    from diffusers.utils import logging as diffusers_logging

    loggers: list[Any] = [diffusers_logging]
    if transformers:
        from transformers.utils import logging as transformers_logging

        loggers.append(transformers_logging)
    levels = [(logger, logger.get_verbosity()) for logger in loggers]
    for logger in loggers:
        logger.set_verbosity_error()
    try:
        yield
    finally:
        for logger, level in levels:
            logger.set_verbosity(level)


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def silence_import_noise() -> None:
    """The import-time lines of `_IMPORT_NOISE_LOGGERS` at error level for good: for an
    application (the ``deskgen`` command), which owns its process's logging."""
    for name in _IMPORT_NOISE_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


_loading_lock = threading.Lock()
_loading_count = 0
_loading_undo: list[Callable[[], None]] = []


def _quiet_for_loading(requirements: tuple[str, ...]) -> list[Callable[[], None]]:
    """Turn the noise off; returns how to turn each thing back as it was."""
    undo: list[Callable[[], None]] = []
    for name in _IMPORT_NOISE_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.ERROR:
            undo.append(functools.partial(logger.setLevel, logger.level))
            logger.setLevel(logging.ERROR)
    if "diffusers" in requirements and _installed("diffusers"):
        from diffusers.utils import logging as diffusers_logging

        drop_vae_upcast_notices()
        if diffusers_logging.is_progress_bar_enabled():
            diffusers_logging.disable_progress_bar()
            undo.append(diffusers_logging.enable_progress_bar)
    if "transformers" in requirements and _installed("transformers"):
        from transformers.utils import logging as transformers_logging

        if transformers_logging.is_progress_bar_enabled():
            transformers_logging.disable_progress_bar()
            undo.append(transformers_logging.enable_progress_bar)
    return undo


@contextlib.contextmanager
def quiet_loading(requirements: tuple[str, ...] = ("diffusers", "transformers")) -> Iterator[None]:
    """No loading progress bars and no import-time noise while the block loads weights (see the
    module); only the libraries in ``requirements`` are touched (an API backend's loading
    imports none of them). Download bars (huggingface_hub's) are left as the user has them.

    Loads in several threads at once share one quiet period: the settings are saved by the
    first to enter and restored by the last to leave."""
    global _loading_count
    with _loading_lock:
        if _loading_count == 0:
            _loading_undo[:] = _quiet_for_loading(requirements)
        _loading_count += 1
    try:
        yield
    finally:
        with _loading_lock:
            _loading_count -= 1
            if _loading_count == 0:
                for undo in reversed(_loading_undo):
                    undo()
                _loading_undo.clear()


class _EmptyFp32Notice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "should be kept in float32: []" not in message


_FP32_FILTER = _EmptyFp32Notice()


def drop_vae_upcast_notices() -> None:
    """Drop the SDXL pipelines' VAE-upcast notices (see the module); idempotent. The warning
    filter matches diffusers' own deprecation of its own ``upcast_vae`` only."""
    logger = logging.getLogger("diffusers.models.modeling_utils")
    if _FP32_FILTER not in logger.filters:
        logger.addFilter(_FP32_FILTER)
    warnings.filterwarnings(
        "ignore", message=r"`upcast_vae` is deprecated", category=FutureWarning, module="diffusers"
    )
