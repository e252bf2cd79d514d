"""``hidream``: HiDream-I1 (Full, Dev, Fast) through diffusers' ``HiDreamImagePipeline``.

Four text encoders: CLIP-L and CLIP-G (pooled), T5-XXL and Llama-3.1-8B-Instruct (the last
loaded from its own id or folder, as HiDream requires). What deskgen adds:

- **A sequence length fitted to the prompt.** diffusers' default ``max_sequence_length=128``
  cut the seed's prompts; deskgen counts each encoder's tokens and passes the longest count
  (at least 128, so short prompts run exactly as stock; at most ``max_sequence_length``, 218 by
  default, the longest HiDream's authors vouch for). Longer prompts follow ``long_prompt``
  (``fit`` by default: whole phrases dropped, reported) and the prompt report says what each
  encoder saw.
- **Low-VRAM loading**: text encoders (above all Llama) and the transformer quantized at load
  time (int8/int4 weights, optimum-quanto or torchao), and diffusers' model or sequential CPU
  offload.
- Each edition's own step count and guidance (Full 50 / 5.0, Dev 28 / 0.0, Fast 16 / 0.0).

HiDream has no image input: a request with a photo is refused; describe the photo with a
backend that can (``openai``, ``janus``) and generate from the description's prompt.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from ..._exceptions import (
    ConfigError,
    InvalidRequestError,
    ModelMismatchError,
    UnsupportedOperationError,
)
from ..._hub import is_local as _is_local
from ..._loading import weights_source
from ..._registry import register_backend
from ...prompts import EncoderFamily, LongPromptMode, PromptPlan, TextEncoderSpec
from ...quant import QuantBackend, WeightBits
from .._base import BackendOptions, Job
from .._profile import BackendProfile, GiB, MemoryProfile
from ._options import MAX_ASPECT, MAX_SIDE, DiffusersOptions
from ._pipeline import DiffusersBackend

if TYPE_CHECKING:
    from PIL import Image

    from ..._models import GenerationRequest, Mode

__all__ = ["EDITIONS", "HiDreamBackend", "HiDreamOptions"]

Edition = Literal["full", "dev", "fast"]

EDITIONS: dict[str, tuple[int, float]] = {"full": (50, 5.0), "dev": (28, 0.0), "fast": (16, 0.0)}
"""Each HiDream-I1 edition's default (steps, guidance scale), from HiDream's reference code: Dev
and Fast are guidance-distilled (no classifier-free guidance, no negative prompt)."""

CLIP_LIMIT = 218
"""Tokens diffusers' HiDream pipeline gives its CLIP encoders at most."""
DEFAULT_SEQUENCE_CAP = 218
"""The longest ``max_sequence_length`` deskgen picks by itself: HiDream's authors say up to 218
works and longer is untested (HiDream-I1#18); 512 gave noisy images (HiDream-I1#33)."""
STOCK_SEQUENCE_LENGTH = 128
"""diffusers' default, kept for prompts that fit in it (the model was trained with it)."""


class HiDreamOptions(DiffusersOptions):
    """Loading options of ``hidream``: the diffusers options plus the Llama encoder, the
    edition, the sequence length and the low-VRAM settings."""

    llama_model: str = "meta-llama/Llama-3.1-8B-Instruct"
    """Hub id or folder of the Llama encoder (``text_encoder_4``) and its tokenizer. The hub
    repo is gated: accept Meta's licence and ``hf auth login`` first."""
    edition: Edition | None = None
    """``full``, ``dev`` or ``fast``: the step and guidance defaults; ``None`` reads it from the
    model's name (``HiDream-I1-Dev``...), else ``full``."""
    max_sequence_length: int | None = Field(default=None, ge=16, le=512)
    """The most tokens T5 and Llama see (CLIP stays at the pipeline's 218). ``None``: 218; a
    request's real token count (at least 128) is what is passed, so nothing under it is cut."""
    quantize_text_encoders: WeightBits | None = None
    """Quantize the T5 and Llama encoders' weights at load (``int8`` about halves them,
    ``int4`` quarters them): Llama-3.1-8B goes from 16 GB to about 9 or 5 GB."""
    quantize_transformer: WeightBits | None = None
    """Quantize the transformer's weights at load (17B parameters: 34 GB in bfloat16)."""
    quantization_backend: QuantBackend = "auto"
    """``quanto`` (optimum-quanto), ``torchao``, or ``auto``: quanto if installed, else torchao."""
    offload: Literal["auto", "none", "model", "sequential"] = "auto"
    """``model``: diffusers' model CPU offload, each component moved to the GPU only while it
    runs (the text encoders leave it after encoding); ``sequential``: layer by layer, the
    least memory and the slowest; ``auto``: ``model`` when the weights (as loaded, quantized
    or not) would leave less than a fifth of the GPU's free memory for the work, else none,
    and none on the CPU. Offload needs a GPU; requests then run one at a time."""


def _edition_from_name(model: str) -> Edition | None:
    """``full``/``dev``/``fast`` from a hub id, a folder (trailing separators allowed) or a
    Hugging Face cache path (``models--HiDream-ai--HiDream-I1-Dev/snapshots/<sha>``)."""
    text = model.replace("\\", "/").rstrip("/")
    named = re.search(r"(?i)hidream[-_]?i1[-_](full|dev|fast)\b", text)
    if named is None:
        named = re.search(r"(?i)(?:^|[-_ ])(full|dev|fast)(?:$|[-_ ])", text.rsplit("/", 1)[-1])
    return named.group(1).lower() if named else None  # type: ignore[return-value]


@register_backend("hidream")
class HiDreamBackend(DiffusersBackend):
    """HiDream-I1 text-to-image (``HiDreamImagePipeline``), four text encoders."""

    profile: ClassVar[BackendProfile] = BackendProfile(
        modes=("txt2img",),
        gguf=True,
        quantizable=(
            "transformer",
            "text_encoder",
            "text_encoder_2",
            "text_encoder_3",
            "text_encoder_4",
            "vae",
        ),
        # QuantConfig(components=None): the transformer, T5 and Llama (the Llama, loaded
        # apart, first)
        default_quantized=("transformer", "text_encoder_3", "text_encoder_4"),
        saves_quantized=True,
        memory=MemoryProfile(
            parameters={  # HiDream-ai/HiDream-I1-Full with meta-llama/Llama-3.1-8B-Instruct
                "transformer": 17_000_000_000,
                "text_encoder": 123_650_304,
                "text_encoder_2": 694_659_840,
                "text_encoder_3": 4_762_310_656,
                "text_encoder_4": 8_030_261_248,
                "vae": 83_819_683,
            },
            work_bytes=6 * GiB,
            # the same components as Full, distilled
            published_models=("HiDream-ai/HiDream-I1-Dev", "HiDream-ai/HiDream-I1-Fast"),
        ),
    )
    speed_options: ClassVar[frozenset[str]] = frozenset({"compile"})
    denoiser: ClassVar[str] = "transformer"

    description: ClassVar[str] = (
        "HiDream-I1 Full/Dev/Fast (diffusers): long prompts, quantized encoders, text only"
    )
    default_model: ClassVar[str | None] = "HiDream-ai/HiDream-I1-Full"
    options_class: ClassVar[type[BackendOptions]] = HiDreamOptions
    txt2img_class: ClassVar[str] = "HiDreamImagePipeline"
    img2img_class: ClassVar[str | None] = None
    accepted_pipelines: ClassVar[frozenset[str]] = frozenset({"HiDreamImagePipeline"})
    family: ClassVar[str] = "HiDream-I1"
    default_guidance: ClassVar[float] = 5.0
    text_encoders: ClassVar[tuple[TextEncoderSpec, ...]] = (
        TextEncoderSpec(name="text_encoder", family=EncoderFamily.CLIP, max_tokens=CLIP_LIMIT),
        TextEncoderSpec(name="text_encoder_2", family=EncoderFamily.CLIP, max_tokens=CLIP_LIMIT),
        TextEncoderSpec(
            name="text_encoder_3",
            family=EncoderFamily.T5,
            max_tokens=DEFAULT_SEQUENCE_CAP,
            # for counting without the model: each edition's own, or T5-XXL's (the same)
            tokenizers=(
                "HiDream-ai/HiDream-I1-Full/tokenizer_3",
                "HiDream-ai/HiDream-I1-Dev/tokenizer_3",
                "HiDream-ai/HiDream-I1-Fast/tokenizer_3",
                "google/t5-v1_1-xxl",
            ),
        ),
        TextEncoderSpec(
            name="text_encoder_4",
            family=EncoderFamily.LLAMA,
            max_tokens=DEFAULT_SEQUENCE_CAP,
            tokenizers=("meta-llama/Llama-3.1-8B-Instruct",),  # llama_model's default
        ),
    )
    default_long_prompt: ClassVar[LongPromptMode] = LongPromptMode.FIT
    default_negative_preset: ClassVar[str | None] = "photo_default"

    def __init__(self, options: BackendOptions) -> None:
        assert isinstance(options, HiDreamOptions)
        self.quantized: dict[str, str] = {}
        """Components quantized at load, e.g. ``{"text_encoder_4": "int8 (quanto)"}``."""
        super().__init__(options)
        named = _edition_from_name(options.model)
        self.edition: Edition = options.edition or named or "full"
        if options.edition is None and named is None:
            warnings.warn(
                f"The HiDream edition of {options.model!r} is not in its name: using Full's "
                "defaults (50 steps, guidance 5.0). Pass edition='dev' or 'fast' for those.",
                UserWarning,
                stacklevel=4,
            )
        self.default_steps, self.guidance_default = EDITIONS[self.edition]
        self.sequence_cap: int = options.max_sequence_length or DEFAULT_SEQUENCE_CAP

    # -- loading -----------------------------------------------------------------------------

    def _no_preset_hint(self) -> str:
        return (
            "HiDream's speed levels are its editions: HiDream-ai/HiDream-I1-Fast (16 steps, no "
            "guidance), -Dev (28 steps) or -Full (50 steps, guidance 5.0); or set steps=."
        )

    def _native_size(self, pipe: Any) -> int:
        return int(pipe.default_sample_size) * self.vae_scale_factor

    def _takes_cfg_embeds(self, pipe: Any) -> bool:
        return True

    def _size_multiple(self) -> int:
        return max(8, 2 * self.vae_scale_factor)  # latents are packed in 2x2 patches

    def _extra_components(self, source: str, index: dict[str, Any]) -> dict[str, Any]:
        """The Llama encoder and its tokenizer, from their own id or folder (quantized first
        when asked, before the rest loads: the peak stays lower)."""
        from transformers import AutoTokenizer, LlamaForCausalLM

        assert isinstance(self.opts, HiDreamOptions)
        self._check_quantization()
        own = index.get("text_encoder_4")
        if (
            isinstance(own, list)
            and own[0] is not None
            and "llama_model" not in (self.opts.model_fields_set)
        ):
            return {}  # a saved pipeline with its Llama inside: use that one
        local, llama_source = self._check_llama(source)
        common = {"cache_dir": self.opts.cache_dir, "local_files_only": self.opts.local_files_only}
        with self._translating_load_errors(self.opts.llama_model, local=local, variant=None):
            tokenizer = AutoTokenizer.from_pretrained(llama_source, **common)
            llama = LlamaForCausalLM.from_pretrained(
                llama_source,
                dtype=self._torch_dtype,
                use_safetensors=None if self.opts.allow_pickle else True,
                **common,
            )
        if self.opts.quantize_text_encoders:
            self._quantize("text_encoder_4", llama, self.opts.quantize_text_encoders)
        return {"text_encoder_4": llama, "tokenizer_4": tokenizer}

    def _check_quantization(self) -> None:
        """Fail before loading tens of GB when the asked quantization can't run here."""
        from ...quant._weights import check_supported

        assert isinstance(self.opts, HiDreamOptions)
        own = self.opts.quantize_text_encoders or self.opts.quantize_transformer
        if own and self.opts.quantization is not None:
            raise ConfigError(
                "Give quantization=QuantConfig(...) or quantize_text_encoders/"
                "quantize_transformer, not both: QuantConfig does what they do, as each "
                "component loads."
            )
        for weights in (self.opts.quantize_text_encoders, self.opts.quantize_transformer):
            if weights is not None:
                check_supported(weights, self.opts.quantization_backend)

    def _check_llama(self, source: str) -> tuple[bool, str]:
        """The Llama must be a Llama as wide as the transformer expects (read from configs,
        before any weight loads: a wrong folder could otherwise build a random 7B model).
        Returns ``(local, source)`` of the Llama."""
        from diffusers import HiDreamImageTransformer2DModel
        from transformers import AutoConfig

        assert isinstance(self.opts, HiDreamOptions)
        name = self.opts.llama_model
        local, llama_source = weights_source(
            name,
            what="Llama",
            hint="pass llama_model= a folder saved with save_pretrained() (model and tokenizer) "
            "or the hub id meta-llama/Llama-3.1-8B-Instruct.",
        )
        common = {"cache_dir": self.opts.cache_dir, "local_files_only": self.opts.local_files_only}
        with self._translating_load_errors(name, local=local, variant=None):
            config = AutoConfig.from_pretrained(llama_source, **common)
        with self._translating_load_errors(self.opts.model, local=_is_local(self.opts.model)):
            transformer = HiDreamImageTransformer2DModel.load_config(
                source, subfolder="transformer", revision=self.opts.revision, **common
            )
        width = list(transformer.get("caption_channels", [0, 0]))[-1]
        layers = max(transformer.get("llama_layers", [0]), default=0)
        kind = getattr(config, "model_type", None)
        hidden = getattr(config, "hidden_size", None)
        depth = getattr(config, "num_hidden_layers", 0)
        if kind != "llama" or hidden != width or depth <= layers:
            raise ModelMismatchError(
                f"llama_model={name!r} is a {kind!r} model of width {hidden} and {depth} layers, "
                f"but this HiDream transformer reads a Llama of width {width} from its layer "
                f"{layers}: pass the Llama it was trained with, "
                "meta-llama/Llama-3.1-8B-Instruct (or a copy saved with save_pretrained())."
            )
        return local, llama_source

    def _quantize(self, name: str, module: Any, weights: WeightBits) -> None:
        from ...quant import quantize_weights

        assert isinstance(self.opts, HiDreamOptions)
        used = quantize_weights(module, weights=weights, backend=self.opts.quantization_backend)
        self.quantized[name] = f"{weights} ({used})"

    def _place(self, pipe: Any) -> None:
        assert isinstance(self.opts, HiDreamOptions)
        if self.opts.quantize_text_encoders:
            if "text_encoder_4" not in self.quantized:  # a Llama from the model's own folder
                self._quantize(
                    "text_encoder_4", pipe.text_encoder_4, self.opts.quantize_text_encoders
                )
            self._quantize("text_encoder_3", pipe.text_encoder_3, self.opts.quantize_text_encoders)
        if self.opts.quantize_transformer:
            self._quantize("transformer", pipe.transformer, self.opts.quantize_transformer)
        super()._place(pipe)  # offload (auto: from the weights as quantized), VAE options

    def _view(self, template: Any) -> Any:
        # the pipeline's constructor sets the shared Llama tokenizer's pad token: not while
        # another thread encodes with it
        with self._encode_lock:
            return super()._view(template)

    # -- prompts -----------------------------------------------------------------------------

    def prompt_encoders(self, length: int | None = None) -> list[tuple[TextEncoderSpec, Any]]:
        """The four encoders with their tokenizers; each limit is ``length`` (default: the
        sequence cap) or the encoder's own maximum, whichever is smaller."""
        pipe = self._txt2img
        if pipe is None:
            self._check_open()
        wanted = length or self.sequence_cap
        encoders = []
        for spec in self.text_encoders:
            tokenizer = getattr(pipe, spec.name.replace("text_encoder", "tokenizer"))
            hard = CLIP_LIMIT if spec.family is EncoderFamily.CLIP else tokenizer.model_max_length
            limit = min(wanted, int(hard))
            encoders.append((spec.model_copy(update={"max_tokens": limit}), tokenizer))
        return encoders

    def plan_prompt(self, request: GenerationRequest) -> PromptPlan:
        if request.long_prompt is LongPromptMode.CHUNK:
            raise InvalidRequestError(
                "long_prompt='chunk' does not apply to hidream: its CLIP encoders give pooled "
                "embeddings only and T5/Llama read the whole prompt up to max_sequence_length "
                f"({self.sequence_cap}). Use 'fit' (the default), 'truncate' or 'error'."
            )
        guidance = request.guidance_scale
        guidance = self.guidance_default if guidance is None else guidance
        ignored = None
        if guidance <= 1 and request.negative_prompt is not None:
            # no classifier-free guidance: the negative prompt is never encoded, so it must not
            # lengthen the sequence or appear in the report as seen
            ignored = request.negative_prompt
            request = request.model_copy(update={"negative_prompt": None})
        with self._encode_lock:
            first = self._plan_for(request, self.prompt_encoders(self.sequence_cap))
            counts = [r.tokens for r in [*first.report.encoders, *first.report.negative_encoders]]
            length = min(max([STOCK_SEQUENCE_LENGTH, *counts]), self.sequence_cap)
            if length == self.sequence_cap:
                plan = first
            else:
                plan = self._plan_for(request, self.prompt_encoders(length))
        if ignored is not None:
            note = (
                f"guidance_scale={guidance:g} runs no classifier-free guidance ({self.edition} "
                f"edition), so the negative prompt {ignored!r} was not used."
            )
            report = plan.report.model_copy(update={"warnings": [*plan.report.warnings, note]})
            plan = dataclasses.replace(plan, report=report)
        return plan

    @staticmethod
    def sequence_length(plan: PromptPlan) -> int:
        """The ``max_sequence_length`` a plan was made for (its largest encoder limit)."""
        return max(r.limit for r in plan.report.encoders)

    def encode_prompt(self, pipe: Any, plan: PromptPlan, *, do_cfg: bool) -> dict[str, Any]:
        t5, negative_t5, llama, negative_llama, pooled, negative_pooled = pipe.encode_prompt(
            prompt=plan.prompt,
            negative_prompt=plan.negative_prompt,
            device=pipe._execution_device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=do_cfg,
            max_sequence_length=self.sequence_length(plan),
        )
        return {
            "prompt_embeds_t5": t5,
            "negative_prompt_embeds_t5": negative_t5,
            "prompt_embeds_llama3": llama,
            "negative_prompt_embeds_llama3": negative_llama,
            "pooled_prompt_embeds": pooled,
            "negative_pooled_prompt_embeds": negative_pooled,
        }

    # -- requests ----------------------------------------------------------------------------

    def _mode(self, job: Job, strength: float) -> Mode:
        if job.photo is not None:
            raise UnsupportedOperationError(
                "HiDream has no image input, so it can't start from the desk photo. Describe the "
                "photo with a backend that can (DeskGenerator('janus') or ('openai')."
                "describe(photo)), then generate here from description.to_spec()"
                ".render(backend='hidream').prompt, without image=..."
            )
        return "txt2img"

    def _plan_size(
        self, request: GenerationRequest, photo: Image.Image | None, *, label: str = "photo"
    ) -> tuple[int, int, list[str]]:
        width, height, warnings = super()._plan_size(request, photo, label=label)
        # the pipeline always renders the native area (1024x1024 for the real model), keeping
        # only the aspect ratio, and it rounds down: deskgen passes the size that the pipeline's
        # own arithmetic leaves unchanged (reached in a few rounds), so the result states the
        # real size
        division = 2 * self.vae_scale_factor

        def rescaled(size: tuple[int, int]) -> tuple[int, int]:
            scale = math.sqrt(self.native_size**2 / (size[0] * size[1]))
            return (
                int(size[0] * scale // division * division),
                int(size[1] * scale // division * division),
            )

        actual = rescaled((width, height))
        for _ in range(16):
            if rescaled(actual) == actual:
                break
            actual = rescaled(actual)
        if max(actual) > MAX_SIDE or min(actual) < division:
            raise InvalidRequestError(
                f"{width}x{height} would render as {actual[0]}x{actual[1]} at HiDream's native "
                f"area: keep the aspect ratio within {MAX_ASPECT:g}:1."
            )
        explicit = request.width is not None or request.height is not None
        if actual != (width, height) and explicit:
            warnings.append(
                f"HiDream renders at its native area ({self.native_size}x{self.native_size} "
                f"pixels): {width}x{height} became {actual[0]}x{actual[1]}, the same aspect ratio."
            )
        return actual[0], actual[1], warnings
