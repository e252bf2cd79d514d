"""Negative-prompt presets: the seed team's three, by name, and any the caller registers.

A request's ``negative_prompt`` is plain text or a preset reference: ``"preset:NAME"``,
optionally followed by more text (``"preset:photo_default, text, watermark"``).
``"preset:default"`` is the chosen backend's default preset.
"""

from __future__ import annotations

import re
import threading

from .._exceptions import InvalidRequestError

__all__ = [
    "PRESET_PREFIX",
    "list_negative_presets",
    "register_negative_preset",
    "resolve_negative_prompt",
]

PRESET_PREFIX = "preset:"

# Verbatim from the seed team's notes (shared/seed/prompts.json).
_PRESETS: dict[str, str] = {
    "photo_default": (
        "blurry, low resolution, distorted, deformed, people, human, cartoon, anime, painting, "
        "clutter, messy background, bad lighting, duplicate, twin, cloned"
    ),
    "controlnet_short": "low quality, bad quality, sketches",
    "sdxl_default": (
        "blurry, low resolution, distorted, clutter, people, human, cartoon, overexposed, "
        "deformed, text"
    ),
}
_LOCK = threading.Lock()
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_REFERENCE = re.compile(r"^\s*preset:([A-Za-z0-9_-]+)\s*(?:,\s*(.*))?$", re.DOTALL)


def list_negative_presets() -> dict[str, str]:
    """Every preset by name (a copy)."""
    with _LOCK:
        return dict(sorted(_PRESETS.items()))


def register_negative_preset(name: str, text: str, *, replace: bool = False) -> None:
    """Add a preset usable as ``negative_prompt="preset:<name>"``.

    Names are lower case letters, digits, ``_`` and ``-``; ``default`` is reserved for "the
    backend's default". A taken name needs ``replace=True``.
    """
    if not _NAME.match(name) or name == "default":
        raise ValueError(
            f"Invalid preset name {name!r}: use lower-case letters, digits, '_' and '-' "
            "('default' is reserved)."
        )
    if not text.strip():
        raise ValueError("A negative preset needs some text.")
    with _LOCK:
        if name in _PRESETS and not replace:
            raise ValueError(f"Preset {name!r} exists; pass replace=True to change it.")
        _PRESETS[name] = text


def resolve_negative_prompt(
    value: str | None, *, backend_default: str | None
) -> tuple[str | None, str | None]:
    """The negative prompt text and the preset it came from (``None`` for plain text).

    Raises:
        InvalidRequestError: an unknown preset, or ``preset:default`` on a backend without one.
    """
    if value is None:
        return None, None
    match = _REFERENCE.match(value)
    if match is None:
        return value, None
    name, extra = match.group(1), match.group(2)
    if name == "default":
        if backend_default is None:
            raise InvalidRequestError(
                "negative_prompt='preset:default' but this backend has no default preset; "
                f"name one of: {', '.join(list_negative_presets())}."
            )
        name = backend_default
    with _LOCK:
        text = _PRESETS.get(name)
        known = sorted(_PRESETS)
    if text is None:
        raise InvalidRequestError(
            f"Unknown negative preset {name!r}. Known presets: {', '.join(known)} "
            "(deskgen.prompts.list_negative_presets(); add your own with "
            "register_negative_preset)."
        )
    return (f"{text}, {extra.strip()}" if extra and extra.strip() else text), name
