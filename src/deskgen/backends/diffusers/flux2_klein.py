"""``flux2-klein``: FLUX.2 [klein] through diffusers' ``Flux2KleinPipeline``.

One model draws a desk from the prompt alone (txt2img) or edits the desk photo by an
instruction, with reference images ("put the lamp from the second image on the desk"): the
photo and the references go to the pipeline as its image list, the photo first. The four
published models share the pipeline and differ in what ``model_index.json`` says:

- ``black-forest-labs/FLUX.2-klein-4B`` and ``-9B`` are step-distilled (``is_distilled``):
  4 steps, no classifier-free guidance (the pipeline ignores ``guidance_scale``);
- ``black-forest-labs/FLUX.2-klein-base-4B`` and ``-base-9B`` are not: 50 steps, guidance 4.0
  against an empty negative prompt, as BFL's reference code runs them.

deskgen reads the flag from the loaded model and sets the step and guidance defaults from it.
What it refuses, and why: ``guidance_scale`` over 1 on a distilled model (the pipeline would
drop it without a word), ``strength`` (the pipeline has none: the instruction says what
changes), images under 64 px a side or more elongated than 8:1 (the pipeline's own limits). A
negative prompt is encoded and guided against on the base models (the pipeline takes its
embeddings; it encodes ``""`` itself otherwise); where no guidance runs (distilled models,
``guidance_scale <= 1``) it is not used, and the result says so.

The text encoder is Qwen3 (Qwen3-4B for the 4B models): the prompt goes in the tokenizer's
chat template (thinking off) and is cut at 512 tokens, template included; the prompt builder
counts exactly that sequence, and fits (by default) or refuses longer prompts. Output size:
the pipeline's own rule, the photo's size, scaled down to 1024 x 1024 pixels of area when
larger and floored to a multiple of 16; without a photo, 1024 x 1024.

With a mask (only the desk changes) the request runs diffusers' ``Flux2KleinInpaintPipeline``
over the same modules: the photo centre-cropped to the output size (the pipeline generates at
the size of the image it gets, at most 1024 x 1024 pixels of area: a larger requested size is
scaled down, and the warnings say so), ``strength`` (0.8, the pipeline's, when left out),
``padding_mask_crop``, and at most one reference image, the pipeline's ``image_reference`` (the
image the masked part follows).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, ClassVar

from ..._exceptions import InvalidRequestError, ModelLoadError, UnsupportedOperationError
from ..._registry import register_backend
from ...prompts import (
    EncoderFamily,
    LongPromptMode,
    PromptPlan,
    TemplatedTokenizer,
    TextEncoderSpec,
)
from .._base import BackendOptions, Job
from .._profile import BackendProfile, GiB, MemoryProfile
from ._options import MAX_SIDE, DiffusersOptions, ImageInputs
from ._pipeline import DiffusersBackend

if TYPE_CHECKING:
    from PIL import Image

    from ..._models import GenerationRequest, Mode

__all__ = [
    "AREA",
    "BASE_DEFAULTS",
    "DISTILLED_DEFAULTS",
    "FLUX2_KLEIN_PARAMETERS",
    "MAX_SEQUENCE_LENGTH",
    "REFERENCES",
    "Flux2KleinBackend",
    "chat_template",
    "pipeline_size",
]

AREA = 1024 * 1024
"""The largest pixel area the pipeline keeps of an input image (larger ones are scaled down)."""
MAX_SEQUENCE_LENGTH = 512
"""Tokens the pipeline gives the text encoder: the chat template and the prompt together."""
MIN_SIDE = 64
MAX_IMAGE_ASPECT = 8.0
"""The pipeline's limits on every input image (``Flux2ImageProcessor.check_image_input``)."""
REFERENCES = 3
"""Reference images besides the photo: four input images in all, what BFL's API takes for
klein (``input_image`` to ``input_image_4``). The pipeline takes any number, but each image adds
up to 4096 tokens to every step at 1024 px: memory and time grow with each."""

DISTILLED_DEFAULTS = (4, 1.0)
"""Steps and guidance of the step-distilled models (FLUX.2-klein-4B/-9B: diffusers' and BFL's
examples run 4 steps at guidance 1.0)."""
BASE_DEFAULTS = (50, 4.0)
"""Steps and guidance of the undistilled base models (FLUX.2-klein-base-4B/-9B)."""

FLUX2_KLEIN_PARAMETERS = {
    # counted from the architecture (diffusers' and transformers' classes built empty, with
    # FLUX.2-klein-4B's published layout): estimates, not read from the files
    "transformer": 3_875_544_576,  # Flux2Transformer2DModel: 5 double, 20 single blocks, 3072
    "text_encoder": 4_022_468_096,  # Qwen3-4B (tied embeddings), Qwen's published 4.0B
    "vae": 84_046_115,  # AutoencoderKLFlux2
}
"""What the memory planner sizes without the files (bfloat16: about 7.8 + 8.0 + 0.2 GB). The
base-4B has the same components; the 9B models (a wider transformer, Qwen3-8B) do not."""

_PROMPT_MARK = "\x00deskgen-prompt\x00"


def chat_template(tokenizer: Any) -> str:
    """The text the pipeline encodes for a prompt, with ``{}`` where the prompt goes: the
    tokenizer's chat template rendered for one user message, thinking off (as
    ``Flux2KleinPipeline._get_qwen3_prompt_embeds`` renders it).

    Raises:
        ModelLoadError: the tokenizer has no chat template, or one that does not put the
            message in once.
    """
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": _PROMPT_MARK}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )
    except Exception as exc:  # transformers raises ValueError without a template
        raise ModelLoadError(
            f"The model's tokenizer can't render its chat template ({type(exc).__name__}: "
            f"{exc}); Flux2KleinPipeline encodes prompts in it. Load a FLUX.2 [klein] folder "
            "whose tokenizer has Qwen3's chat template (tokenizer_config.json or "
            "chat_template.jinja)."
        ) from exc
    if not isinstance(text, str) or text.count(_PROMPT_MARK) != 1 or "{}" in text:
        raise ModelLoadError(
            "The model tokenizer's chat template does not hold the prompt exactly once: "
            "deskgen can't count the tokens the text encoder sees. Use the tokenizer of a "
            "FLUX.2 [klein] model (Qwen3's)."
        )
    return text.replace(_PROMPT_MARK, "{}")


def pipeline_size(size: tuple[int, int], *, multiple: int) -> tuple[int, int]:
    """The output size the pipeline gives a photo of ``size`` (width, height): scaled down to
    `AREA` when larger (``int`` of each side, as ``_resize_to_target_area``), each side floored
    to ``multiple`` (the VAE's scale times the 2x2 patches: 16)."""
    width, height = size
    if width * height > AREA:
        scale = math.sqrt(AREA / (width * height))
        width, height = int(width * scale), int(height * scale)
    return max(multiple, width // multiple * multiple), max(multiple, height // multiple * multiple)


@register_backend("flux2-klein")
class Flux2KleinBackend(DiffusersBackend):
    """FLUX.2 [klein] 4B/9B, distilled or base, in the diffusers layout: txt2img and edits."""

    description: ClassVar[str] = (
        "FLUX.2 [klein] (diffusers): txt2img and photo edits with references; 4-step distilled"
    )
    default_model: ClassVar[str | None] = "black-forest-labs/FLUX.2-klein-4B"
    options_class: ClassVar[type[BackendOptions]] = DiffusersOptions
    txt2img_class: ClassVar[str] = "Flux2KleinPipeline"
    img2img_class: ClassVar[str | None] = None
    inpaint_class: ClassVar[str | None] = "Flux2KleinInpaintPipeline"
    accepted_pipelines: ClassVar[frozenset[str]] = frozenset({"Flux2KleinPipeline"})
    family: ClassVar[str] = "FLUX.2 [klein]"
    default_guidance: ClassVar[float] = BASE_DEFAULTS[1]
    """The base models'; a distilled model's is 1.0 (`DISTILLED_DEFAULTS`), set at load."""
    denoiser: ClassVar[str] = "transformer"
    speed_options: ClassVar[frozenset[str]] = frozenset({"compile"})
    text_encoders: ClassVar[tuple[TextEncoderSpec, ...]] = (
        TextEncoderSpec(
            name="text_encoder",
            family=EncoderFamily.QWEN,
            max_tokens=MAX_SEQUENCE_LENGTH,
            tokenizers=(
                "black-forest-labs/FLUX.2-klein-4B/tokenizer",
                "black-forest-labs/FLUX.2-klein-base-4B/tokenizer",
                "black-forest-labs/FLUX.2-klein-9B/tokenizer",
                "black-forest-labs/FLUX.2-klein-base-9B/tokenizer",
            ),
        ),
    )
    default_long_prompt: ClassVar[LongPromptMode] = LongPromptMode.FIT
    profile: ClassVar[BackendProfile] = BackendProfile(
        modes=("txt2img", "edit", "inpaint"),
        masks=True,
        gguf=True,
        loras=True,
        references=REFERENCES,
        quantizable=("transformer", "text_encoder", "vae"),
        default_quantized=("transformer",),
        saves_quantized=True,
        memory=MemoryProfile(
            parameters=FLUX2_KLEIN_PARAMETERS,
            # a 1024 px edit with one photo: output and photo latents (2 x 4096 tokens) and
            # the 512 text tokens in the transformer, then the VAE decode; an estimate from
            # the architecture, not measured on a GPU
            work_bytes=4 * GiB,
            published_models=("black-forest-labs/FLUX.2-klein-base-4B",),
        ),
        demo="flux2-klein",
        notes=(
            "step and guidance defaults from model_index.json's is_distilled: 4 steps, no "
            "guidance (FLUX.2-klein-4B/-9B) or 50 steps, guidance 4.0 (-base-4B/-base-9B)",
        ),
    )

    def __init__(self, options: BackendOptions) -> None:
        super().__init__(options)
        pipe = self._txt2img
        self.distilled: bool = bool(pipe.config.get("is_distilled", False))
        """``model_index.json``'s ``is_distilled``: step-distilled, no classifier-free guidance."""
        self.default_steps, self.guidance_default = (
            DISTILLED_DEFAULTS if self.distilled else BASE_DEFAULTS
        )
        try:
            self.prompt_template: str = chat_template(pipe.tokenizer)
            """What the text encoder sees, ``{}`` standing for the prompt."""
        except ModelLoadError:
            self.close()  # the weights are loaded: free them before refusing
            raise
        self._counter = TemplatedTokenizer(pipe.tokenizer, template=self.prompt_template)

    # -- loading -----------------------------------------------------------------------------

    def _no_preset_hint(self) -> str:
        return (
            "FLUX.2 [klein]'s speed levels are its models: the step-distilled "
            "black-forest-labs/FLUX.2-klein-4B (or -9B) runs 4 steps without guidance, the "
            "base models (-base-4B, -base-9B) 50 steps with guidance 4.0; or set steps=."
        )

    def _native_size(self, pipe: Any) -> int:
        return int(pipe.default_sample_size) * self.vae_scale_factor

    def _takes_cfg_embeds(self, pipe: Any) -> bool:
        return True

    def _size_multiple(self) -> int:
        return self.vae_scale_factor * 2  # latents are packed in 2x2 patches

    # -- prompts -----------------------------------------------------------------------------

    def prompt_encoders(self) -> list[tuple[TextEncoderSpec, Any]]:
        """Qwen3 with its own tokenizer, counted inside the chat template (512 tokens)."""
        if self._txt2img is None:
            self._check_open()
        return [(self.text_encoders[0], self._counter)]

    def _guidance_off(self, guidance: float) -> str | None:
        """Why no classifier-free guidance runs at ``guidance`` (``None``: it runs)."""
        if self.distilled:
            return (
                f"{self.opts.model!r} is step-distilled (is_distilled in model_index.json) and "
                "runs no classifier-free guidance"
            )
        if guidance <= 1:
            return f"guidance_scale={guidance:g} turns classifier-free guidance off"
        return None

    def plan_prompt(self, request: GenerationRequest) -> PromptPlan:
        guidance = request.guidance_scale
        why = self._guidance_off(self.guidance_default if guidance is None else guidance)
        ignored = request.negative_prompt if why is not None else None
        if ignored is not None:  # never encoded: neither counted nor reported as seen
            request = request.model_copy(update={"negative_prompt": None})
        plan = super().plan_prompt(request)
        if ignored is not None:
            hint = (
                "use a base model (e.g. black-forest-labs/FLUX.2-klein-base-4B) to guide against it"
                if self.distilled
                else "give a guidance_scale over 1 (e.g. 4.0) to guide against it"
            )
            note = f"The negative prompt {ignored!r} was not used: {why}; {hint}."
            report = plan.report.model_copy(update={"warnings": [*plan.report.warnings, note]})
            plan = dataclasses.replace(plan, report=report)
        return plan

    def encode_prompt(self, pipe: Any, plan: PromptPlan, *, do_cfg: bool) -> dict[str, Any]:
        """Qwen3's stacked hidden states of the prompt and, with guidance, of the negative
        prompt (``""`` without one, what the pipeline encodes by itself)."""
        prompt = plan.prompt_chunks[0].chunks[0] if plan.prompt_chunks else plan.prompt
        device = pipe._execution_device
        embeds, _ = pipe.encode_prompt(
            prompt=prompt, device=device, max_sequence_length=MAX_SEQUENCE_LENGTH
        )
        call: dict[str, Any] = {"prompt_embeds": embeds}
        if do_cfg:
            negative = plan.negative_prompt or ""
            if plan.negative_chunks and plan.negative_prompt is not None:
                negative = plan.negative_chunks[0].chunks[0]
            negative_embeds, _ = pipe.encode_prompt(
                prompt=negative, device=device, max_sequence_length=MAX_SEQUENCE_LENGTH
            )
            call["negative_prompt_embeds"] = negative_embeds
        return call

    # -- requests ----------------------------------------------------------------------------

    def _does_cfg(self, guidance: float, job: Job) -> bool:
        return self._guidance_off(guidance) is None

    def _mode(self, job: Job, strength: float) -> Mode:
        if job.photo is None:
            return "txt2img"
        return "inpaint" if job.mask is not None else "edit"

    def _plan_size(
        self, request: GenerationRequest, photo: Image.Image | None, *, label: str = "photo"
    ) -> tuple[int, int, list[str]]:
        width, height, warnings = self._edit_size(request, photo, label=label)
        if photo is None or not request.masked or width * height <= AREA:
            return width, height, warnings
        # the inpainting pipeline generates at the image's size, scaled down to AREA
        kept = pipeline_size((width, height), multiple=self._size_multiple())
        warnings.append(
            f"The output is {kept[0]}x{kept[1]}, not {width}x{height}: FLUX.2 [klein]'s "
            f"inpainting pipeline generates at most {AREA} pixels (1024x1024) of area."
        )
        return kept[0], kept[1], warnings

    def _edit_size(
        self, request: GenerationRequest, photo: Image.Image | None, *, label: str
    ) -> tuple[int, int, list[str]]:
        # the photo is given whole to the pipeline (never cropped to the output's aspect)
        width, height = request.width, request.height
        if photo is None or (width is not None and height is not None):
            return super()._plan_size(request, None, label=label)
        multiple = self._size_multiple()
        if width is None and height is None:
            w, h = pipeline_size(photo.size, multiple=multiple)
            return w, h, []
        _, _, warnings = super()._plan_size(request, None, label=label)  # checks the given side
        aspect = photo.width / photo.height
        if width is not None:
            height = max(multiple, round(width / aspect / multiple) * multiple)
        else:
            assert height is not None
            width = max(multiple, round(height * aspect / multiple) * multiple)
        if max(width, height) > MAX_SIDE:
            raise InvalidRequestError(
                f"The output would be {width}x{height} px (the {label}'s aspect ratio), over the "
                f"{MAX_SIDE} px limit: give a smaller width/height, or both."
            )
        return width, height, warnings

    def _check_image(self, image: Image.Image, what: str) -> None:
        """The pipeline's limits on an input image, as a deskgen error that says what to do."""
        w, h = image.size
        if min(w, h) < MIN_SIDE:
            raise InvalidRequestError(
                f"The {what} is {w}x{h} px: FLUX.2 [klein]'s pipeline needs at least "
                f"{MIN_SIDE} px on each side. Give a larger image (upscale it first)."
            )
        if max(w / h, h / w) > MAX_IMAGE_ASPECT:
            raise InvalidRequestError(
                f"The {what} is {w}x{h} px, more elongated than the {MAX_IMAGE_ASPECT:g}:1 "
                "FLUX.2 [klein]'s pipeline takes: crop it first."
            )

    def _image_inputs(
        self, job: Job, *, mode: Mode, width: int, height: int, strength: float
    ) -> ImageInputs:
        request = job.request
        if request.strength is not None and mode != "inpaint":
            raise InvalidRequestError(
                "flux2-klein has no strength: the pipeline redraws the desk from the photo and "
                "the instruction, which says what changes. Leave out strength=..., and say "
                "'keep ...' in the prompt (with a mask, strength says how much of the masked "
                "part is redrawn)."
            )
        guidance = request.guidance_scale
        if self.distilled and guidance is not None and guidance > 1:
            raise InvalidRequestError(
                f"guidance_scale={guidance:g} would be ignored: {self.opts.model!r} is "
                "step-distilled (is_distilled in model_index.json) and runs no classifier-free "
                "guidance (diffusers' Flux2KleinPipeline drops it). Leave guidance_scale out "
                "(or 1.0), or load a base model, e.g. black-forest-labs/FLUX.2-klein-base-4B, "
                "to guide."
            )
        call: dict[str, Any] = {"height": height, "width": width}
        if mode == "inpaint":
            if len(job.references) > 1:
                raise UnsupportedOperationError(
                    f"flux2-klein takes one reference image with a mask, not "
                    f"{len(job.references)}: its inpainting pipeline (Flux2KleinInpaintPipeline) "
                    "has one image_reference, the image the masked part follows. Give one, or "
                    "leave out the mask to edit the whole photo with several."
                )
            call |= self._inpaint_inputs(job, width=width, height=height)
            call["strength"] = strength
            if job.references:
                self._check_image(job.references[0], "reference image 1")
                call["image_reference"] = job.references[0]
        elif mode == "edit":
            assert job.photo is not None
            images = [job.photo, *job.references]
            for i, image in enumerate(images):
                self._check_image(image, "photo" if i == 0 else f"reference image {i}")
            call["image"] = images
        return ImageInputs(call=call)
