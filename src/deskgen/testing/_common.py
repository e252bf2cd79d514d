"""What the tiny-model writers share: the marker that makes a build reusable, the check that the
``local`` extra is installed, the sentences the tiny tokenizers are trained on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._exceptions import MissingDependencyError

__all__: list[str] = []

_MARKER = "deskgen_tiny.json"
"""The file in each tiny model's folder that records what was built there (`_built`)."""


def _built(target: Path, spec: dict[str, Any], *, overwrite: bool) -> bool:
    """Whether ``target`` already holds the tiny model ``spec`` describes (its marker file)."""
    marker = target / _MARKER
    return not overwrite and marker.is_file() and json.loads(marker.read_text()) == spec


def _require_local() -> None:
    """Raise `MissingDependencyError` (the ``local`` extra) unless torch, diffusers and
    transformers can be imported."""
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            "deskgen.testing", extra="local", missing=[exc.name or "torch/diffusers"]
        ) from exc


_CORPUS = (
    "a clean modern desk setup in a bright open office with a large monitor and a laptop",
    "a minimalist LED desk lamp on the left and a sleek wireless charger pad",
    "all cables neatly organized and hidden, calm tidy professional natural lighting",
    "a wooden desk with a plant, a keyboard, a mouse, a mug and a notebook",
    "research monitoring or visual content analysis in a collaborative lab",
)
"""Desk sentences the tiny tokenizers are trained on (with the demo's prompts)."""
