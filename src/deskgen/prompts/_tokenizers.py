"""Tokenizers for counting: the packaged real CLIP vocabulary, T5/Llama from a folder or the
Hugging Face cache, or any tokenizer object the caller hands in. Counting never loads a model."""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

from .._exceptions import ConfigError, MissingDependencyError, ModelNotFoundError

__all__ = [
    "DEFAULT_TOKENIZERS",
    "EncoderFamily",
    "Token",
    "clip_tokenizer_dir",
    "count_tokens",
    "packaged_clip_tokenizer",
    "resolve_tokenizer",
    "tokenize",
]

TOKENIZER_LOCK = threading.RLock()
"""Held around every tokenizer call: fast tokenizers raise "Already borrowed" when shared
between threads (diffusers#9362)."""


class EncoderFamily(str, Enum):
    """Text encoder families deskgen knows the token rules of."""

    CLIP = "clip"
    T5 = "t5"
    LLAMA = "llama"


DEFAULT_TOKENIZERS: dict[EncoderFamily, str] = {
    EncoderFamily.T5: "google/t5-v1_1-xxl",
    EncoderFamily.LLAMA: "meta-llama/Llama-3.1-8B-Instruct",
}
"""Hub ids whose tokenizers stand for a family when no tokenizer is given (HiDream's T5-XXL and
Llama-3.1-8B-Instruct); they load from the local Hugging Face cache or a download."""


@dataclass(frozen=True)
class Token:
    """One token of a text, with the span of the original text it came from."""

    id: int
    piece: str
    start: int
    end: int


def _require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            "Counting tokens", extra="local", missing=["transformers"]
        ) from exc


def clip_tokenizer_dir() -> Path:
    """The real CLIP BPE vocabulary shipped inside deskgen (MIT, OpenAI), as a folder path."""
    return Path(str(resources.files("deskgen") / "_data" / "clip"))


@functools.cache
def packaged_clip_tokenizer(pad_token: str = "<|endoftext|>") -> Any:
    """The real CLIP tokenizer from the vocabulary shipped with deskgen (MIT, OpenAI).

    SD 1.x/2.x and both SDXL encoders tokenize with this vocabulary; SDXL's second encoder pads
    with ``"!"`` instead of ``"<|endoftext|>"``, which changes no count.
    """
    _require_transformers()
    from transformers import CLIPTokenizer

    folder = clip_tokenizer_dir()
    return CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        model_max_length=77,
        pad_token=pad_token,
    )


@functools.cache
def _load_tokenizer(name: str) -> Any:
    _require_transformers()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"No tokenizer could be loaded from {name!r} (not a folder with tokenizer files, and "
            "not in the local Hugging Face cache or reachable). Pass encoder=<a tokenizer "
            "object or folder>, or download it once: `hf download "
            f"{name} --include 'tokenizer*' 'special_tokens_map.json' '*.model'`."
        ) from exc


def resolve_tokenizer(encoder: EncoderFamily | str | Any) -> tuple[Any, EncoderFamily | None]:
    """A tokenizer and its family from a family name, a folder or hub id, or a tokenizer."""
    if isinstance(encoder, EncoderFamily) or encoder in {f.value for f in EncoderFamily}:
        family = EncoderFamily(encoder)
        if family is EncoderFamily.CLIP:
            return packaged_clip_tokenizer(), family
        return _load_tokenizer(DEFAULT_TOKENIZERS[family]), family
    if isinstance(encoder, (str, os.PathLike)):
        return _load_tokenizer(os.fspath(encoder)), None
    if callable(getattr(encoder, "encode", None)) or callable(encoder):
        return encoder, None
    raise ConfigError(
        f"encoder={encoder!r} is not an encoder family ('clip', 't5', 'llama'), a tokenizer "
        "folder or hub id, or a tokenizer object."
    )


def tokenize(tokenizer: Any, text: str, *, offset: int = 0) -> list[Token]:
    """Content tokens of ``text`` (no special tokens), with their spans in the original text."""
    if not text:
        return []
    with TOKENIZER_LOCK:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        pieces = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    return [
        Token(id=int(i), piece=str(p), start=offset + int(s), end=offset + int(e))
        for i, p, (s, e) in zip(enc["input_ids"], pieces, enc["offset_mapping"], strict=True)
    ]


def token_count(tokenizer: Any, text: str, *, special: bool = True) -> int:
    """Tokens ``tokenizer`` makes of ``text`` (uncut, no over-length warning), under the lock."""
    with TOKENIZER_LOCK:
        return len(tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"])


def special_token_count(tokenizer: Any) -> int:
    """How many special tokens the tokenizer adds to a text (CLIP: BOS + EOS = 2)."""
    return token_count(tokenizer, "")


def count_tokens(
    text: str, *, encoder: EncoderFamily | str | Any = EncoderFamily.CLIP, special: bool = True
) -> int:
    """Tokens an encoder sees for ``text``, uncut, before any model is loaded.

    Args:
        text: the prompt.
        encoder: ``"clip"`` (exact, from the packaged vocabulary), ``"t5"`` or ``"llama"`` (their
            tokenizers from the local Hugging Face cache), a tokenizer folder or hub id, or a
            tokenizer object (e.g. ``pipe.tokenizer``).
        special: include the special tokens the encoder adds (CLIP's BOS and EOS), as the
            encoder's limit counts them: the seed's long prompt is 128 with them, 126 without.
    """
    tokenizer, _ = resolve_tokenizer(encoder)
    return token_count(tokenizer, text, special=special)
