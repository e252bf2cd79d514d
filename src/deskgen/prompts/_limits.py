"""Length rules that are not CLIP's: OpenAI's character limits and T5/Llama sequence lengths."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._tokenizers import token_count

__all__ = ["CHARACTER_LIMITS", "character_limit", "sequence_length_for"]

CHARACTER_LIMITS: dict[str, int] = {
    "dall-e-2": 1000,
    "dall-e-3": 4000,
    "gpt-image-1": 32000,
}
"""Prompt length limits of OpenAI image models, in characters (OpenAI's API reference)."""


def character_limit(model: str) -> int | None:
    """The prompt character limit of an OpenAI image model; GPT image models share 32,000."""
    if model in CHARACTER_LIMITS:
        return CHARACTER_LIMITS[model]
    if model.startswith("gpt-image-"):
        return CHARACTER_LIMITS["gpt-image-1"]
    return None


def sequence_length_for(
    texts: Sequence[str], tokenizer: Any, *, model_max: int, minimum: int = 128
) -> tuple[int, int]:
    """The ``max_sequence_length`` to pass a T5/Llama encoder so nothing is cut below its limit.

    Returns ``(length, longest)``: ``length`` is the longest text's token count (special tokens
    included), at least ``minimum`` (the pipeline's default, so short prompts behave exactly as
    stock) and at most ``model_max``; ``longest`` is that token count, so ``longest > length``
    means the encoder's own limit cuts the text.
    """
    longest = max((token_count(tokenizer, text) for text in texts), default=0)
    return min(max(longest, minimum), model_max), longest
