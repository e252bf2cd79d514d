"""What the prompt builder reports about each request: per text encoder, what it saw."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from ._tokenizers import EncoderFamily

__all__ = ["EncoderReport", "LongPromptMode", "PromptReport", "TextEncoderSpec"]


class LongPromptMode(str, Enum):
    """What to do with a prompt longer than a text encoder's limit."""

    CHUNK = "chunk"
    """Encode it all in 75-token chunks joined on the sequence axis (A1111); nothing is lost."""
    FIT = "fit"
    """Drop whole phrases, last (lowest priority) first, until it fits; reported."""
    TRUNCATE = "truncate"
    """Let the encoder cut it at its limit, as diffusers does; the cut text is reported."""
    ERROR = "error"
    """Refuse it with `PromptTooLongError`, which shows the overflow."""


class TextEncoderSpec(BaseModel):
    """One text encoder of a backend, as the prompt builder needs it."""

    model_config = ConfigDict(frozen=True)

    name: str
    """The pipeline component, e.g. ``"text_encoder_2"``."""
    family: EncoderFamily
    max_tokens: int
    """Tokens the encoder sees at once, special tokens included (CLIP: 77)."""
    tokenizers: tuple[str, ...] = ()
    """Where the encoder's tokenizer is published, for counting without the model
    (`deskgen.prompts.check_prompt`): hub ids, or ``REPO/SUBFOLDER``; the first one found in
    the local Hugging Face cache is used. Empty: the family's (CLIP's packaged vocabulary, or
    the hub id in `DEFAULT_TOKENIZERS`)."""
    pooled: bool = False
    """The encoder gives the pipeline only its pooled vector (FLUX's CLIP-L beside T5): it
    reads the first ``max_tokens`` tokens whatever the mode, the ``fit`` and ``error`` modes
    size the text for the other encoders, and what it never saw is reported."""


class EncoderReport(BaseModel):
    """What one text encoder saw of one text."""

    model_config = ConfigDict(frozen=True)

    encoder: str
    family: EncoderFamily
    tokens: int
    """Tokens of the whole text (before any cut), special tokens included."""
    limit: int
    """Tokens the encoder sees at once, special tokens included."""
    chunks: list[str]
    """The exact text of each piece encoded: one piece unless the text was chunked."""
    dropped: str = ""
    """Text the encoder never saw (``truncate`` mode); empty otherwise."""

    @property
    def over_limit(self) -> bool:
        return self.tokens > self.limit


class PromptReport(BaseModel):
    """The prompt builder's account of a request, per text encoder of the backend."""

    model_config = ConfigDict(frozen=True)

    backend: str
    mode: LongPromptMode
    prompt: str
    """The prompt as encoded: trigger words added, unwanted words removed, ``fit`` applied."""
    negative_prompt: str | None
    negative_preset: str | None = None
    """The preset the negative prompt came from, if any."""
    encoders: list[EncoderReport] = Field(default_factory=list)
    negative_encoders: list[EncoderReport] = Field(default_factory=list)
    dropped_phrases: list[str] = Field(default_factory=list)
    """Whole phrases of the prompt dropped by ``fit`` mode, exactly as written."""
    negative_dropped_phrases: list[str] = Field(default_factory=list)
    trigger_words_added: list[str] = Field(default_factory=list)
    words_removed: list[str] = Field(default_factory=list)
    characters: int | None = None
    """Prompt length in characters, for backends limited by characters (OpenAI)."""
    character_limit: int | None = None
    warnings: list[str] = Field(default_factory=list)

    @property
    def lossless(self) -> bool:
        """True when every encoder saw all of the prompt and the negative prompt."""
        return not (
            self.dropped_phrases
            or self.negative_dropped_phrases
            or any(r.dropped for r in [*self.encoders, *self.negative_encoders])
        )

    def summary(self) -> str:
        """A few human-readable lines, as the CLI prints them."""
        lines = [f"prompt mode {self.mode.value} ({self.backend})"]
        for label, reports in (("prompt", self.encoders), ("negative", self.negative_encoders)):
            for r in reports:
                chunks = f", {len(r.chunks)} chunks" if len(r.chunks) > 1 else ""
                cut = f", dropped {r.dropped!r}" if r.dropped else ""
                lines.append(f"  {label:<8} {r.encoder}: {r.tokens}/{r.limit} tokens{chunks}{cut}")
        if self.characters is not None:
            lines.append(f"  prompt   {self.characters}/{self.character_limit} characters")
        if self.dropped_phrases:
            lines.append(f"  dropped phrases: {self.dropped_phrases}")
        if self.negative_dropped_phrases:
            lines.append(f"  dropped negative phrases: {self.negative_dropped_phrases}")
        if self.negative_preset:
            lines.append(f"  negative preset: {self.negative_preset}")
        if self.trigger_words_added:
            lines.append(f"  trigger words added: {self.trigger_words_added}")
        if self.words_removed:
            lines.append(f"  words removed: {self.words_removed}")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)
