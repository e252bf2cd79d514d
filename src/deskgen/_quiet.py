"""Quieting diffusers' and transformers' logs for a block: what they say there is no news to a
deskgen user (e.g. a LoRA's load report listing every base weight as missing)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["quiet_logs"]


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
