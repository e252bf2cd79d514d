"""Shortening a prompt to a token budget by dropping whole phrases, lowest priority first."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

__all__ = ["FitResult", "Phrase", "fit_phrases", "join_phrases", "split_phrases"]

_SPLIT = re.compile(r"([,;](?![\'\"])|[.!?](?=\s|$)|\n+)")  # not `,'` / `,"` ending a quote
_ENDS = (".", "!", "?", "\n")


@dataclass(frozen=True)
class Phrase:
    """A clause of a prompt and the punctuation around it in the original text."""

    text: str
    separator: str
    """What followed the phrase: ``","``, ``";"``, a sentence end, ``"\\n"`` or ``""``."""
    sentence: int
    """Index of the sentence the phrase belongs to."""
    sentence_end: str = ""
    """How the phrase's sentence ended in the original (``"."``, ``"!"``, ``"?"``, ``"\\n"``
    or ``""``), restored when the sentence's last phrases are dropped."""


def split_phrases(text: str) -> list[Phrase]:
    """Split at commas, semicolons, sentence ends and line breaks; words are never split.

    A comma inside quotes splits too, so a quoted phrase may be dropped in parts.
    """
    phrases: list[Phrase] = []
    parts = _SPLIT.split(text)
    sentence = 0
    for i in range(0, len(parts), 2):
        chunk = parts[i].strip()
        sep = parts[i + 1] if i + 1 < len(parts) else ""
        sep = "\n" if sep.startswith("\n") else sep
        if chunk:
            phrases.append(Phrase(text=chunk, separator=sep, sentence=sentence))
        if sep in _ENDS:
            sentence += 1
    ends: dict[int, str] = {}
    for phrase in phrases:
        if phrase.separator in _ENDS:
            ends[phrase.sentence] = phrase.separator
    return [replace(p, sentence_end=ends.get(p.sentence, "")) for p in phrases]


def join_phrases(phrases: Sequence[Phrase]) -> str:
    """Rebuild text from (some of) its phrases; a sentence that lost its end keeps its stop."""
    out: list[str] = []
    for i, phrase in enumerate(phrases):
        nxt = phrases[i + 1] if i + 1 < len(phrases) else None
        sep = phrase.separator
        if sep in (",", ";", "") and (nxt is None or nxt.sentence != phrase.sentence):
            sep = phrase.sentence_end
        out.append(phrase.text + sep)
        if nxt is not None and sep != "\n":
            out.append(" ")
    return "".join(out).strip()


@dataclass(frozen=True)
class FitResult:
    text: str
    dropped: list[str]
    """The dropped phrases, exactly as written, in their original order."""
    fits: bool


def fit_phrases(
    text: str,
    *,
    count: Callable[[str], int],
    budget: int,
    priorities: Sequence[float] | None = None,
) -> FitResult:
    """Drop whole phrases until ``count(text) <= budget``.

    Without ``priorities`` earlier phrases matter more (prompts put the important part first),
    so phrases go from the end. ``fits`` is false when even the most important phrase alone is
    over the budget; it is kept (an empty prompt helps nobody) and the caller decides.
    """
    if count(text) <= budget:
        return FitResult(text=text, dropped=[], fits=True)
    phrases = split_phrases(text)
    ranks = list(priorities) if priorities is not None else [-i for i in range(len(phrases))]
    if len(ranks) != len(phrases):
        raise ValueError(f"priorities gives {len(ranks)} numbers for {len(phrases)} phrases")
    kept = list(range(len(phrases)))
    dropped: list[int] = []
    candidate = text
    while len(kept) > 1:
        lowest = min(kept, key=lambda i: (ranks[i], -i))
        kept.remove(lowest)
        dropped.append(lowest)
        candidate = join_phrases([phrases[i] for i in kept])
        if count(candidate) <= budget:
            break
    return FitResult(
        text=candidate,
        dropped=[phrases[i].text for i in sorted(dropped)],
        fits=count(candidate) <= budget,
    )
