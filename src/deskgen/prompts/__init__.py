"""The prompt builder: token budgets per text encoder, long prompts, presets, desk specs.

Nothing is lost silently: every request gets a `PromptReport` that says, per text encoder, how
many tokens it saw, in how many chunks, and the exact text it did not see. Long prompts are
encoded whole (``chunk``, the default for CLIP backends), shortened by whole phrases (``fit``),
cut by the encoder and reported (``truncate``), or refused (``error``).

```python
from deskgen.prompts import check_prompt, count_tokens

count_tokens("a tidy desk")                      # 5: BOS, 3 words, EOS (real CLIP vocabulary)
print(check_prompt(long_text, backend="sdxl").summary())  # before any model is loaded
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._chunks import CHUNK_TOKENS, PromptChunk, split_on_break
from ._description import DESCRIBE_INSTRUCTION, DeskDescription
from ._fit import FitResult, fit_phrases
from ._limits import CHARACTER_LIMITS, character_limit, sequence_length_for
from ._plan import PromptPlan, plan_prompt
from ._presets import list_negative_presets, register_negative_preset, resolve_negative_prompt
from ._profile import PromptProfile, prompt_profile
from ._report import EncoderReport, LongPromptMode, PromptReport, TextEncoderSpec
from ._spec import DeskItem, DeskSpec, Priority, RenderedPrompt
from ._tokenizers import (
    EncoderFamily,
    TemplatedTokenizer,
    count_tokens,
    encoder_tokenizers,
    packaged_clip_tokenizer,
)
from ._triggers import apply_trigger_words

__all__ = [
    "CHARACTER_LIMITS",
    "CHUNK_TOKENS",
    "DESCRIBE_INSTRUCTION",
    "DeskDescription",
    "DeskItem",
    "DeskSpec",
    "EncoderFamily",
    "EncoderReport",
    "FitResult",
    "LongPromptMode",
    "Priority",
    "PromptChunk",
    "PromptPlan",
    "PromptProfile",
    "PromptReport",
    "RenderedPrompt",
    "TemplatedTokenizer",
    "TextEncoderSpec",
    "apply_trigger_words",
    "character_limit",
    "check_prompt",
    "chunk_prompt",
    "count_tokens",
    "fit_phrases",
    "list_negative_presets",
    "plan_prompt",
    "register_negative_preset",
    "resolve_negative_prompt",
    "sequence_length_for",
    "split_on_break",
]


def chunk_prompt(text: str, *, size: int = CHUNK_TOKENS) -> list[PromptChunk]:
    """The CLIP chunks ``chunk`` mode encodes for ``text`` (real CLIP vocabulary)."""
    from ._chunks import split_chunks

    return split_chunks(packaged_clip_tokenizer(), text, size=size)


def check_prompt(
    prompt: str,
    *,
    backend: str | PromptProfile = "sdxl",
    negative_prompt: str | None = None,
    long_prompt: LongPromptMode | str | None = None,
    trigger_words: Sequence[str] = (),
    remove_words: Sequence[str] = (),
    tokenizers: Mapping[str, Any] | None = None,
) -> PromptReport:
    """The `PromptReport` a request would get on ``backend``, without loading any model.

    CLIP counts are exact (the real vocabulary ships with deskgen); T5 and Llama tokenizers
    come from ``tokenizers`` or the local Hugging Face cache, never from a download nobody
    asked for. A loaded generator's ``gen.check_prompt`` uses the pipeline's own tokenizers.

    Args:
        tokenizers: tokenizers by encoder name (``{"text_encoder_3": "/models/t5-tok"}``) or
            family (``{"llama": ...}``): a folder, a hub id (downloaded when not cached) or a
            tokenizer object. Encoders left out use the packaged CLIP vocabulary or the cache.

    Raises:
        PromptTooLongError: with ``long_prompt="error"``, a text over an encoder's limit.
        UnknownBackendError: no such backend.
        ModelNotFoundError: a T5/Llama tokenizer neither given nor cached (the message says
            which, and what to pass).
        ConfigError: a key of ``tokenizers`` that is no encoder of the backend.
    """
    profile = prompt_profile(backend)
    encoders = encoder_tokenizers(profile.name, profile.text_encoders, tokenizers)
    plan = plan_prompt(
        backend=profile.name,
        prompt=prompt,
        negative_prompt=negative_prompt,
        encoders=encoders,
        mode=LongPromptMode(long_prompt) if long_prompt is not None else None,
        default_mode=profile.default_long_prompt,
        default_negative_preset=profile.default_negative_preset,
        trigger_words=trigger_words,
        remove_words=remove_words,
    )
    return plan.report
