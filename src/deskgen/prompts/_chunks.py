"""A1111-style chunking of long prompts for CLIP encoders.

A CLIP encoder sees 77 tokens: BOS, 75 of the prompt, EOS (padded). A longer prompt is split into
chunks of at most 75 tokens, each encoded on its own and joined on the sequence axis. Splits fall
after a comma or period when one lies in the last ``backtrack`` tokens of a chunk (A1111's comma
back-tracking), else at the last word end, never inside a word. ``BREAK`` (upper case, a word on
its own) closes the chunk early.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict

from ._tokenizers import Token, tokenize

__all__ = ["CHUNK_TOKENS", "PromptChunk", "split_chunks", "split_on_break"]

CHUNK_TOKENS = 75
"""Prompt tokens per CLIP chunk (77 with BOS and EOS)."""

_BREAK = re.compile(r"(?<!\S)BREAK(?!\S)")
_PHRASE_END_PIECES = frozenset({",</w>", ".</w>", ";</w>", ",", ".", ";"})


class PromptChunk(BaseModel):
    """One chunk of a prompt: the exact span of the original text, and its token count."""

    model_config = ConfigDict(frozen=True)

    text: str
    tokens: int
    """Prompt tokens in the chunk, without BOS/EOS."""


def split_on_break(text: str) -> list[tuple[int, str]]:
    """The pieces of ``text`` between ``BREAK`` keywords, with their offsets."""
    pieces = []
    start = 0
    for match in _BREAK.finditer(text):
        pieces.append((start, text[start : match.start()]))
        start = match.end()
    pieces.append((start, text[start:]))
    return pieces


def _word_end(token: Token) -> bool:
    return token.piece.endswith("</w>")


def _cut(tokens: list[Token], size: int, backtrack: int) -> int:
    for i in range(size, max(size - backtrack, 0), -1):
        if tokens[i - 1].piece in _PHRASE_END_PIECES:
            return i
    for i in range(size, 0, -1):
        if _word_end(tokens[i - 1]):
            return i
    return size  # one "word" longer than a chunk: nothing better than a hard cut


def split_chunks(
    tokenizer: Any, text: str, *, size: int = CHUNK_TOKENS, backtrack: int = 20
) -> list[PromptChunk]:
    """Split ``text`` into chunks of at most ``size`` tokens (see the module docs).

    An empty text (or one that is only ``BREAK``s) gives one empty chunk, which encodes like the
    empty prompt.
    """
    chunks: list[PromptChunk] = []
    for offset, piece in split_on_break(text):
        tokens = tokenize(tokenizer, piece, offset=offset)
        while tokens:
            cut = len(tokens) if len(tokens) <= size else _cut(tokens, size, backtrack)
            head, tokens = tokens[:cut], tokens[cut:]
            chunks.append(PromptChunk(text=text[head[0].start : head[-1].end], tokens=len(head)))
    return chunks or [PromptChunk(text="", tokens=0)]
