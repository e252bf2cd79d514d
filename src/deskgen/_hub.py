"""Hub id or local path, and whether the Hugging Face Hub may be contacted.

A leaf module (nothing heavy at import: ``huggingface_hub`` only inside `offline`): the
diffusers backends, the token counter (`deskgen.prompts`) and the memory planner
(`deskgen.quant`) all tell a folder from a hub id the same way.
"""

from __future__ import annotations

import os
import re

__all__ = ["HUB_ID", "is_local", "offline"]

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
"""A hub id: ``NAME`` or ``OWNER/NAME``."""

_HUB_SOURCE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)*$")
"""A hub id with a subfolder: ``OWNER/NAME/SUBFOLDER...``."""

_TRUE = {"1", "true", "yes", "on"}


def is_local(model: str, *, subfolder: bool = False) -> bool:
    """Whether ``model`` names a local path rather than a hub id: an absolute path, one that
    starts with ``.`` or ``~``, one that exists, or anything that is not shaped like a hub id
    (``OWNER/NAME``; with ``subfolder``, ``OWNER/NAME/SUBFOLDER`` too)."""
    expanded = os.path.expanduser(model)
    shape = _HUB_SOURCE if subfolder else HUB_ID
    return (
        os.path.isabs(expanded)
        or model.startswith((".", "~"))
        or os.path.exists(expanded)
        or not shape.match(model)
    )


def offline() -> bool:
    """Whether the Hub must not be contacted: ``HF_HUB_OFFLINE`` as set now (huggingface_hub
    reads it once, at import), or as huggingface_hub read it."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - comes with diffusers and transformers
        return False
    return bool(constants.HF_HUB_OFFLINE)
