"""Describing a desk photo with a vision-language model (Janus, Qwen2.5-VL): one free answer to
the instruction, then the structured fields as one JSON answer, or, where that is not valid
JSON, one short answer per field. The model is a callable ``answer(question, max_new_tokens)``
that answers about the photo; nothing here imports a model library."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from pydantic import ValidationError

from ._description import DescriptionFields, DeskDescription

__all__ = ["describe_with", "parse_description_json"]

_FIELD_QUESTIONS: dict[str, str] = {
    "summary": "Describe the whole scene in one or two sentences.",
    "items": "List the items on and around the desk, separated by commas.",
    "keep": "Which main furniture and devices should a desk makeover keep? "
    "Answer with a comma-separated list.",
    "remove": "Which clutter should a desk makeover clear? Answer with a comma-separated list.",
    "style": "In a few words, what is the current style of the desk?",
    "lighting": "In a few words, describe the lighting.",
    "clutter": "How cluttered is the desk? Answer with one word: none, low, medium or high.",
    "colours": "List the main colours, separated by commas.",
    "room": "In a few words, describe the room around the desk.",
}
"""One short question per field, for answers that were not valid JSON."""

_JSON_REQUEST = (
    "Now answer as JSON with these keys: summary (one or two sentences), items (list), keep "
    "(list of main furniture and devices to keep), remove (list of clutter to clear), style, "
    "lighting, clutter (one of none, low, medium, high), colours (list), room. JSON only."
)


def _split_list(answer: str) -> list[str]:
    parts = re.split(r"[,;\n]|\band\b", answer)
    return [p.strip(" .-*•\t") for p in parts if p.strip(" .-*•\t")][:12]


def _first_clutter_word(answer: str) -> str | None:
    match = re.search(r"\b(none|low|medium|high)\b", answer.lower())
    return match.group(1) if match else None


_CLUTTER_SYNONYMS = {
    "moderate": "medium",
    "some": "medium",
    "messy": "high",
    "cluttered": "high",
    "very high": "high",
    "minimal": "low",
    "tidy": "low",
    "clean": "none",
}


def parse_description_json(answer: str) -> DescriptionFields | None:
    """The structured fields from a JSON answer (inside ``` fences or not), or ``None``."""
    match = re.search(r"\{.*\}", answer, flags=re.DOTALL)
    if match is None:
        return None
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    # near misses a small model makes: a list as one string, a clutter word not in the four
    for key in ("items", "keep", "remove", "colours"):
        if isinstance(data.get(key), str):
            data[key] = _split_list(data[key])
    clutter = data.get("clutter")
    if isinstance(clutter, str):
        data["clutter"] = _first_clutter_word(clutter) or _CLUTTER_SYNONYMS.get(
            clutter.strip().lower(), clutter
        )
    try:
        return DescriptionFields.model_validate(data)
    except ValidationError:
        return None


def describe_with(
    answer: Callable[[str, int], str], *, instruction: str, max_new_tokens: int = 512
) -> DeskDescription:
    """A `DeskDescription` of the photo ``answer`` answers about: its answer to
    ``instruction`` (at most ``max_new_tokens``), then the fields."""
    text = answer(instruction, max_new_tokens)
    fields = parse_description_json(answer(f"{instruction}\n{_JSON_REQUEST}", 384))
    if fields is None:
        fields = _fields_one_by_one(answer)
    return DeskDescription(**fields.model_dump(), text=text)


def _fields_one_by_one(answer: Callable[[str, int], str]) -> DescriptionFields:
    answers = {name: answer(question, 48) for name, question in _FIELD_QUESTIONS.items()}
    lists = {name: _split_list(answers[name]) for name in ("items", "keep", "remove", "colours")}
    return DescriptionFields(
        summary=answers["summary"],
        style=answers["style"],
        lighting=answers["lighting"],
        room=answers["room"],
        # an answer without one of the four words: "medium" keeps the makeover's own
        # clutter-clearing on without claiming the desk is a mess
        clutter=_first_clutter_word(answers["clutter"]) or "medium",  # type: ignore[arg-type]
        **lists,
    )
