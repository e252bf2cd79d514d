"""`DeskSpec`: a desk makeover described as data, rendered into prompts that fit the backend."""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ._profile import PromptProfile

__all__ = ["DeskItem", "DeskSpec", "Priority", "RenderedPrompt"]


class Priority(IntEnum):
    """How much a phrase matters when the budget is short: higher stays longer."""

    LOW = 1
    NORMAL = 2
    HIGH = 3
    MUST = 4


class DeskItem(BaseModel):
    """Something to add to the desk."""

    model_config = ConfigDict(frozen=True)

    what: str = Field(min_length=1)
    """e.g. ``"a minimalist LED desk lamp on the left"``."""
    priority: Priority = Priority.NORMAL

    @field_validator("priority", mode="before")
    @classmethod
    def _by_name(cls, value: Any) -> Any:
        return Priority[value.upper()] if isinstance(value, str) else value


class RenderedPrompt(BaseModel):
    """A `DeskSpec` rendered for one backend."""

    model_config = ConfigDict(frozen=True)

    backend: str
    prompt: str
    negative_prompt: str | None
    dropped: list[str] = Field(default_factory=list)
    """Phrases of the prompt left out to stay within the budget, highest priority first."""
    negative_dropped: list[str] = Field(default_factory=list)
    tokens: int | None = None
    """Tokens of the prompt with special tokens (``None`` for backends without text encoders)."""
    budget: int | None = None

    def request(self, **fields: Any) -> Any:
        """A `GenerationRequest` with this prompt and negative prompt, plus ``fields``."""
        from .._models import GenerationRequest

        return GenerationRequest(prompt=self.prompt, negative_prompt=self.negative_prompt, **fields)


class DeskSpec(BaseModel):
    """A desk makeover as data: what to keep, add and avoid, in what style and light.

    ```python
    spec = DeskSpec(
        style="minimalist scandinavian",
        palette=["white oak", "sage green"],
        lighting="soft natural daylight",
        add=[DeskItem(what="a wireless charger pad", priority="high"), "a small plant"],
        keep=["monitor", "window"],
        avoid=["visible cables"],
    )
    rendered = spec.render(backend="sdxl")  # within SDXL's 77 CLIP tokens
    gen.generate(rendered.request(image="desk.jpg", seed=1))
    ```
    """

    model_config = ConfigDict(extra="forbid")

    subject: str = "a realistic photo of a desk setup"
    style: str | None = None
    palette: list[str] = Field(default_factory=list)
    lighting: str | None = None
    mood: str | None = None
    add: list[DeskItem] = Field(default_factory=list)
    keep: list[str] = Field(default_factory=list)
    """Existing things to keep (the room, the monitor...): high priority."""
    avoid: list[str] = Field(default_factory=list)
    """Things to keep out: they lead the negative prompt."""
    extra: list[str] = Field(default_factory=list)
    """Low-priority quality words, e.g. ``"high detail"``."""
    negative_preset: str | None = "default"
    """A negative preset name (``"default"``: the backend's); ``None`` for none."""

    @field_validator("add", mode="before")
    @classmethod
    def _items(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"what": v} if isinstance(v, str) else v for v in value]
        return value

    def phrases(self) -> list[tuple[str, Priority]]:
        """The prompt's phrases in output order, each with its priority."""
        out: list[tuple[str, Priority]] = [(self.subject, Priority.MUST)]
        if self.style:
            out.append((f"{self.style} style", Priority.HIGH))
        out += [(f"keep the existing {k}", Priority.HIGH) for k in self.keep]
        out += [(item.what, item.priority) for item in self.add]
        if self.lighting:
            out.append((self.lighting, Priority.NORMAL))
        if self.palette:
            out.append((f"{' and '.join(self.palette)} colour palette", Priority.NORMAL))
        if self.mood:
            out.append((f"{self.mood} mood", Priority.LOW))
        out += [(e, Priority.LOW) for e in self.extra]
        return out

    def render(
        self, *, backend: str | PromptProfile = "sdxl", max_tokens: int | None = None
    ) -> RenderedPrompt:
        """Prompt and negative prompt within ``backend``'s text-encoder budget.

        Phrases join in priority order while they fit (``max_tokens`` overrides the budget, in
        tokens with special tokens); the output keeps the spec's natural order. Without text
        encoders (API backends) nothing is dropped here.
        """
        from ._presets import resolve_negative_prompt
        from ._profile import prompt_profile
        from ._tokenizers import EncoderFamily, packaged_clip_tokenizer, token_count

        cls = prompt_profile(backend)
        clip = [s for s in cls.text_encoders if s.family is EncoderFamily.CLIP]
        count: Callable[[str], int] | None = None
        budget = max_tokens
        if clip or max_tokens is not None:
            tokenizer = packaged_clip_tokenizer()
            budget = max_tokens if max_tokens is not None else min(s.max_tokens for s in clip)

            def count(text: str) -> int:
                return token_count(tokenizer, text)

        prompt, dropped = _select(self.phrases(), count, budget)
        negative_phrases = [(a, Priority.HIGH) for a in self.avoid]
        preset = self.negative_preset
        if preset == "default" and cls.default_negative_preset is None:
            preset = None  # a backend without a default preset gets none
        if preset is not None:
            preset_text, _ = resolve_negative_prompt(
                f"preset:{preset}", backend_default=cls.default_negative_preset
            )
            assert preset_text is not None
            negative_phrases += [(p.strip(), Priority.NORMAL) for p in preset_text.split(",")]
        negative, negative_dropped = _select(negative_phrases, count, budget)
        return RenderedPrompt(
            backend=cls.name,
            prompt=prompt,
            negative_prompt=negative or None,
            dropped=dropped,
            negative_dropped=negative_dropped,
            tokens=count(prompt) if count else None,
            budget=budget,
        )


def _select(
    phrases: list[tuple[str, Priority]],
    count: Callable[[str], int] | None,
    budget: int | None,
) -> tuple[str, list[str]]:
    def join(indices: list[int]) -> str:
        return ", ".join(phrases[i][0] for i in sorted(indices))

    if count is None or budget is None:
        return join(list(range(len(phrases)))), []
    order = sorted(range(len(phrases)), key=lambda i: (-phrases[i][1], i))
    kept: list[int] = []
    dropped: list[int] = []
    for i in order:
        if count(join([*kept, i])) <= budget:
            kept.append(i)
        else:
            dropped.append(i)
    return join(kept), [phrases[i][0] for i in dropped]
