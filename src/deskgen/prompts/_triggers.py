"""Adding a LoRA's trigger words to a prompt, and removing unwanted words from it."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["apply_trigger_words"]


def _pattern(phrase: str) -> re.Pattern[str]:
    words = [re.escape(w) for w in phrase.split()]
    return re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)", re.IGNORECASE)


def _tidy(text: str) -> str:
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"\s+([,;.])", r"\1", text)
    text = re.sub(r"([,;])(\s*[,;])+", r"\1", text)
    text = re.sub(r"([,;])\s*([.!?])", r"\2", text)
    return text.strip().strip(",;").strip()


def apply_trigger_words(
    text: str, *, add: Sequence[str] = (), remove: Sequence[str] = ()
) -> tuple[str, list[str], list[str]]:
    """Remove each phrase of ``remove`` (case-insensitive, whole words), then put each phrase of
    ``add`` that the prompt lacks at its front, as LoRA trigger words go.

    Returns the new prompt, the phrases added, and the phrases removed (those that were there).
    """
    removed = []
    for phrase in (p.strip() for p in remove):
        if not phrase:
            continue
        pattern = _pattern(phrase)
        if pattern.search(text):
            removed.append(phrase)
            text = _tidy(pattern.sub("", text))
    added = [
        phrase
        for phrase in dict.fromkeys(p.strip() for p in add)
        if phrase and not _pattern(phrase).search(text)
    ]
    if added:
        text = ", ".join([*added, text]) if text else ", ".join(added)
    return text, added, removed
