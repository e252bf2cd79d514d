"""Planning a request's prompts for a backend's text encoders: the heart of the prompt builder.

`plan_prompt` takes the request's texts and the backend's encoders (with tokenizers) and returns
what each encoder must encode plus the `PromptReport`. Backends then encode the plan; the
offline `check_prompt` runs the same planning with the packaged tokenizers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._exceptions import PromptTooLongError
from ._chunks import split_chunks, split_on_break
from ._fit import fit_phrases
from ._language import non_latin_scripts
from ._presets import resolve_negative_prompt
from ._report import EncoderReport, LongPromptMode, PromptReport, TextEncoderSpec
from ._tokenizers import EncoderFamily, special_token_count, token_count, tokenize
from ._triggers import apply_trigger_words

__all__ = ["EncoderText", "PromptPlan", "plan_prompt"]


@dataclass(frozen=True)
class EncoderText:
    """What one encoder must encode for one text: its pieces, in order."""

    spec: TextEncoderSpec
    chunks: list[str]


@dataclass(frozen=True)
class PromptPlan:
    report: PromptReport
    prompt: str
    negative_prompt: str | None
    prompt_chunks: list[EncoderText] = field(default_factory=list)
    negative_chunks: list[EncoderText] = field(default_factory=list)

    @property
    def chunked(self) -> bool:
        """True when some text must be encoded in more than one chunk."""
        return any(len(e.chunks) > 1 for e in [*self.prompt_chunks, *self.negative_chunks])


@dataclass
class _Processed:
    text: str
    reports: list[EncoderReport]
    chunks: list[EncoderText]
    dropped_phrases: list[str]


def _process(
    text: str,
    role: str,
    mode: LongPromptMode,
    encoders: Sequence[tuple[TextEncoderSpec, Any]],
) -> _Processed:
    if mode is not LongPromptMode.CHUNK and len(split_on_break(text)) > 1:
        # BREAK is a chunk-mode keyword; elsewhere it would be encoded as the word "break"
        text = ", ".join(p.strip(" ,") for _, p in split_on_break(text) if p.strip(" ,"))
    counts = [token_count(tok, text) for _, tok in encoders]
    dropped_phrases: list[str] = []
    if mode is LongPromptMode.ERROR:
        for (spec, tok), tokens in zip(encoders, counts, strict=True):
            if tokens > spec.max_tokens and not spec.pooled:
                keep = spec.max_tokens - special_token_count(tok)
                overflow = tokenize(tok, text)[keep:]
                raise PromptTooLongError(
                    role=role,
                    encoder=spec.name,
                    tokens=tokens,
                    limit=spec.max_tokens,
                    overflow=text[overflow[0].start :] if overflow else "",
                )
    # pooled-only encoders read what fits of the text the others are given
    sized = [(spec, tok) for spec, tok in encoders if not spec.pooled] or list(encoders)
    if mode is LongPromptMode.FIT and sized:

        def over_limit(candidate: str) -> int:  # fit every encoder, not just the smallest limit
            return max(token_count(tok, candidate) - spec.max_tokens for spec, tok in sized)

        fitted = fit_phrases(text, count=over_limit, budget=0)
        text, dropped_phrases = fitted.text, fitted.dropped
        counts = [token_count(tok, text) for _, tok in encoders]
    reports: list[EncoderReport] = []
    chunks: list[EncoderText] = []
    for (spec, tok), tokens in zip(encoders, counts, strict=True):
        pieces, dropped = [text], ""
        chunkable = (
            spec.family is EncoderFamily.CLIP and mode is LongPromptMode.CHUNK and not spec.pooled
        )
        if tokens > spec.max_tokens and chunkable:
            size = spec.max_tokens - special_token_count(tok)
            pieces = [c.text for c in split_chunks(tok, text, size=size)]
        elif tokens > spec.max_tokens:  # truncate, a fit that could not get under the limit,
            # or an encoder that can't be chunked (T5/Llama: its limit is its maximum)
            keep = spec.max_tokens - special_token_count(tok)
            toks = tokenize(tok, text)
            pieces = [text[: toks[keep - 1].end] if keep > 0 else ""]
            dropped = text[toks[keep].start :]
        elif (
            chunkable
            and len(split_on_break(text)) > 1  # BREAK starts a new chunk even in short prompts
        ):
            pieces = [c.text for c in split_chunks(tok, text)]
        reports.append(
            EncoderReport(
                encoder=spec.name,
                family=spec.family,
                tokens=tokens,
                limit=spec.max_tokens,
                chunks=pieces,
                dropped=dropped,
            )
        )
        chunks.append(EncoderText(spec=spec, chunks=pieces))
    return _Processed(text=text, reports=reports, chunks=chunks, dropped_phrases=dropped_phrases)


def _language_warnings(text: str, role: str, encoders: Sequence[TextEncoderSpec]) -> list[str]:
    scripts = non_latin_scripts(text)
    clip = [e.name for e in encoders if e.family is EncoderFamily.CLIP]
    if not scripts or not clip:
        return []
    return [
        f"The {role} contains {' and '.join(scripts)} text. CLIP text encoders "
        f"({', '.join(clip)}) were trained on English captions and understand little else: "
        f"write the {role} in English for this backend."
    ]


def plan_prompt(
    *,
    backend: str,
    prompt: str,
    negative_prompt: str | None,
    encoders: Sequence[tuple[TextEncoderSpec, Any]],
    mode: LongPromptMode | None,
    default_mode: LongPromptMode = LongPromptMode.CHUNK,
    default_negative_preset: str | None = None,
    trigger_words: Sequence[str] = (),
    remove_words: Sequence[str] = (),
    character_limit: int | None = None,
    count_characters: Callable[[str], int] = len,
) -> PromptPlan:
    """Plan what each text encoder encodes for a request, and report it.

    Raises:
        PromptTooLongError: ``mode`` is ``error`` and a text is over an encoder's limit, or over
            ``character_limit``.
        InvalidRequestError: an unknown negative preset.
    """
    mode = LongPromptMode(mode) if mode is not None else default_mode
    text, added, removed = apply_trigger_words(prompt, add=trigger_words, remove=remove_words)
    negative, preset = resolve_negative_prompt(
        negative_prompt, backend_default=default_negative_preset
    )
    specs = [spec for spec, _ in encoders]
    warnings = _language_warnings(text, "prompt", specs)
    pos = _process(text, "prompt", mode, encoders)
    neg = None
    if negative is not None:
        warnings += _language_warnings(negative, "negative prompt", specs)
        neg = _process(negative, "negative prompt", mode, encoders)
    final = pos.text
    dropped_phrases = list(pos.dropped_phrases)
    if character_limit is not None and count_characters(final) > character_limit:
        if mode is not LongPromptMode.ERROR:
            fitted = fit_phrases(final, count=count_characters, budget=character_limit)
            final, dropped_phrases = fitted.text, dropped_phrases + fitted.dropped
        if count_characters(final) > character_limit:  # error mode, or no phrase split helps
            extra = count_characters(final) - len(final)  # text the backend adds (a suffix)
            raise PromptTooLongError(
                role="prompt",
                encoder="characters",
                tokens=count_characters(final),
                limit=character_limit,
                overflow=final[max(character_limit - extra, 0) :],
            )
    for role, processed in (("prompt", pos), ("negative prompt", neg)):
        if processed is None:
            continue
        cut: dict[str, list[str]] = {}
        for encoder_report in processed.reports:
            if encoder_report.dropped:
                cut.setdefault(encoder_report.dropped, []).append(encoder_report.encoder)
        pooled = {spec.name for spec in specs if spec.pooled}
        for dropped, names in cut.items():
            limit = next(r.limit for r in processed.reports if r.encoder == names[0])
            if set(names) <= pooled:
                whole = [r.encoder for r in processed.reports if r.encoder not in pooled]
                warnings.append(
                    f"{' and '.join(names)} (its pooled vector only) read the first {limit} "
                    f"tokens of the {role} and never saw: {dropped!r}"
                    + (f"; {' and '.join(whole)} read it whole." if whole else ".")
                )
                continue
            warnings.append(
                f"{' and '.join(names)} cut the {role} at {limit} tokens and never saw: {dropped!r}"
            )
    report = PromptReport(
        backend=backend,
        mode=mode,
        prompt=final,
        negative_prompt=neg.text if neg else None,
        negative_preset=preset,
        encoders=pos.reports,
        negative_encoders=neg.reports if neg else [],
        dropped_phrases=dropped_phrases,
        negative_dropped_phrases=neg.dropped_phrases if neg else [],
        trigger_words_added=added,
        words_removed=removed,
        characters=count_characters(final) if character_limit is not None else None,
        character_limit=character_limit,
        warnings=warnings,
    )
    return PromptPlan(
        report=report,
        prompt=final,
        negative_prompt=neg.text if neg else None,
        prompt_chunks=pos.chunks,
        negative_chunks=neg.chunks if neg else [],
    )
