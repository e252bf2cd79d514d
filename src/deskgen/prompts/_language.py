"""Spotting prompt text that CLIP-style encoders will not understand."""

from __future__ import annotations

import unicodedata

__all__ = ["non_latin_scripts"]

_NAMES = {
    "HANGUL": "Korean (Hangul)",
    "CJK": "Chinese/Japanese (CJK)",
    "HIRAGANA": "Japanese (Hiragana)",
    "KATAKANA": "Japanese (Katakana)",
    "CYRILLIC": "Cyrillic",
    "ARABIC": "Arabic",
    "HEBREW": "Hebrew",
    "GREEK": "Greek",
    "THAI": "Thai",
    "DEVANAGARI": "Devanagari",
}


def non_latin_scripts(text: str) -> list[str]:
    """Names of the non-Latin scripts whose letters appear in ``text``, in order of appearance."""
    found: dict[str, None] = {}
    for char in text:
        if not char.isalpha() or char.isascii():
            continue
        name = unicodedata.name(char, "")
        script = name.split(" ", 1)[0]
        if script == "LATIN":
            continue
        found[_NAMES.get(script, script.title() or "unknown")] = None
    return list(found)
