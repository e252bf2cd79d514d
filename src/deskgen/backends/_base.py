"""The one interface every backend implements.

A backend loads its weights in ``__init__`` and turns a `Job` into a `BackendOutput`. Everything
around that (validating requests, reading photos, seeds, timing the whole call, peak memory,
building the `GenerationResult`) is the facade's (`deskgen.DeskGenerator`), so backends stay
small and interchangeable.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from .._exceptions import UnsupportedOperationError
from ..prompts._description import DeskDescription
from ..prompts._plan import PromptPlan, plan_prompt
from ..prompts._report import LongPromptMode, TextEncoderSpec
from ._profile import BackendProfile

if TYPE_CHECKING:
    from PIL import Image

    from .._controls import Control
    from .._lora import LoadedLora
    from .._models import GenerationRequest, Mode
    from .diffusers._adapters import LoraAdapters

__all__ = ["Backend", "BackendOptions", "BackendOutput", "Job"]


class BackendOptions(BaseModel):
    """Options every backend accepts; backends subclass it to add their own."""

    # strict: "3" is not a number of retries, nor 1 a bool (no lax coercion)
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True, strict=True)

    model: str = Field(min_length=1, pattern=r"\S")
    """Hub id or local folder (an empty name is refused: it would mean the current folder)."""
    device: str = "auto"
    dtype: str = "auto"


@dataclass
class Job:
    """One request, as a backend receives it: validated, photo read, seeds chosen."""

    request: GenerationRequest
    """Validated; ``seed`` is set. ``image`` is the caller's raw input: use `photo`."""
    photo: Image.Image | None
    """The normalised RGB photo (no metadata), not yet resized; ``None`` for txt2img."""
    mask: Image.Image | None
    """The mask as a grey-scale image at the photo's size (white: change, black: keep, grey:
    the feathered edge of a found mask), or ``None``. The facade puts the photo back outside it
    afterwards (``keep_unmasked``); backends whose profile has no ``masks`` never get one."""
    seeds: list[int]
    prompt: PromptPlan
    """What to encode: the prompt builder's plan for this backend (trigger words applied,
    negative preset resolved, ``fit`` applied, chunks chosen). Encode ``prompt.prompt`` and
    ``prompt.negative_prompt``, not the request's raw texts."""
    on_step: Callable[[int, int], None]
    """Call after each denoising step with (steps done, total steps); it raises to cancel."""
    control_images: list[Image.Image | None] | None = None
    """The request's own control images (normalised RGB, one per control, ``None`` where the
    backend computes it), or ``None``. Only backends whose profile has ``control_images`` get
    them."""
    references: list[Image.Image] = field(default_factory=list)
    """The request's reference images (normalised RGB), in order; only backends whose profile
    takes ``references`` get any."""
    check_cancel: Callable[[], None] = lambda: None
    """Raises `GenerationCancelledError` when the request was cancelled: call it before work
    that can't be undone (e.g. a paid API request)."""


@dataclass
class BackendOutput:
    images: list[Image.Image]
    seeds: list[int]
    """The seed of each returned image (a backend may leave out images it must not return)."""
    request: GenerationRequest
    """The request with every default resolved (size, guidance scale, negative prompt)."""
    mode: Mode
    width: int
    height: int
    denoising_steps: int
    scheduler: str
    encode_seconds: float
    denoise_seconds: float
    decode_seconds: float
    warnings: list[str] = field(default_factory=list)
    control_seconds: float = 0.0
    """Computing control images from the photo (ControlNet backends)."""
    cost_usd: float | None = None
    """Estimated price of the request, for paid APIs."""
    revised_prompts: list[str] = field(default_factory=list)
    """Prompts as a service rewrote them (DALL-E 3), one per image."""
    controls: list[Control] = field(default_factory=list)
    """The controls as used (ControlNet backends)."""
    control_images: list[Image.Image] = field(default_factory=list)
    """The control image of each control, as the ControlNets saw it."""
    loras: list[LoadedLora] = field(default_factory=list)
    """The LoRA adapters used, with the weights used."""
    scheduler_settings: dict[str, Any] = field(default_factory=dict)
    """What the backend set over the model's own scheduler config, and sampler arguments such
    as ``eta`` (a preset's: `GenerationResult.scheduler_settings`)."""


class Backend(abc.ABC):
    """Base class of deskgen backends. Register subclasses with `deskgen.register_backend`."""

    name: ClassVar[str] = ""
    """Registry name, set by `register_backend`."""
    description: ClassVar[str] = ""
    extra: ClassVar[str] = ""
    """The pip extra that installs this backend's dependencies."""
    requirements: ClassVar[tuple[str, ...]] = ()
    """Importable module names this backend needs (checked by `list_backends`)."""
    default_model: ClassVar[str | None] = None
    options_class: ClassVar[type[BackendOptions]] = BackendOptions
    text_encoders: ClassVar[tuple[TextEncoderSpec, ...]] = ()
    """The text encoders the prompt builder plans for (empty: none, e.g. an API backend)."""
    default_long_prompt: ClassVar[LongPromptMode] = LongPromptMode.CHUNK
    default_negative_preset: ClassVar[str | None] = None
    """What ``negative_prompt="preset:default"`` means on this backend."""
    profile: ClassVar[BackendProfile] = BackendProfile()
    """What this backend can do (modes, LoRAs, masks, references, quantization, presets,
    describe, planner sizes): the facade, planner, CLI, bench and docs read it."""

    def __init__(self, options: BackendOptions) -> None:
        self.options = options

    @property
    @abc.abstractmethod
    def device(self) -> str:
        """The device the weights live on, e.g. ``"cuda"`` or ``"cpu"``."""

    @property
    @abc.abstractmethod
    def dtype(self) -> str:
        """The weights' dtype name, e.g. ``"bfloat16"``."""

    @property
    def model_id(self) -> str:
        return self.options.model

    @property
    def lora_adapters(self) -> LoraAdapters | None:
        """The LoRA adapters of backends that take LoRAs (``None``: this one doesn't)."""
        return None

    def prompt_character_limit(self) -> int | None:
        """A limit in characters on the prompt (hosted APIs), checked by the prompt builder."""
        return None

    def prompt_character_counter(self, request: GenerationRequest) -> Callable[[str], int]:
        """How the characters of a prompt are counted against `prompt_character_limit`: by
        default its length; a backend that adds text to the prompt counts that too."""
        return len

    def prompt_encoders(self) -> list[tuple[TextEncoderSpec, Any]]:
        """The text encoders with the tokenizers that count for them (default: none)."""
        return []

    def plan_prompt(self, request: GenerationRequest) -> PromptPlan:
        """The prompt builder's plan and report for ``request`` on this backend."""
        return self._plan_for(request, self.prompt_encoders())

    def _plan_for(
        self, request: GenerationRequest, encoders: list[tuple[TextEncoderSpec, Any]]
    ) -> PromptPlan:
        """The prompt builder run over ``encoders`` with this backend's defaults."""
        return plan_prompt(
            backend=self.name,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            encoders=encoders,
            mode=request.long_prompt,
            default_mode=self.default_long_prompt,
            default_negative_preset=self.default_negative_preset,
            trigger_words=request.trigger_words,
            remove_words=request.remove_words,
            character_limit=self.prompt_character_limit(),
            count_characters=self.prompt_character_counter(request),
        )

    def describe(self, photo: Image.Image, *, instruction: str) -> DeskDescription:
        """Describe a (normalised) desk photo. Backends without a vision model can't."""
        raise UnsupportedOperationError(
            f"The {self.name!r} backend can't describe photos: use one that can, e.g. "
            "DeskGenerator('openai').describe(photo), and pass its description's prompt here."
        )

    @abc.abstractmethod
    def generate(self, job: Job) -> BackendOutput:
        """Run one job. Must be safe to call from several threads at once."""

    @abc.abstractmethod
    def close(self) -> None:
        """Drop the weights and free their memory; the backend is unusable afterwards."""
