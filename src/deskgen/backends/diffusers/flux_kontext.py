"""``flux-kontext``: the desk photo edited by an instruction, the room kept (FLUX.1 Kontext).

diffusers' ``FluxKontextPipeline`` (black-forest-labs/FLUX.1-Kontext-dev) redraws the photo as
the instruction says ("hide the cables, add a warm lamp; keep the window and the wall"); without
a photo it draws the desk from the prompt alone (``txt2img``).

Text: CLIP-L gives the transformer only its pooled vector, from the prompt's first 77 tokens; T5
reads the prompt whole, up to 512 tokens (the pipeline's ``max_sequence_length``). The prompt
builder sizes prompts for T5 (``fit``: phrases dropped last first until T5 holds them) and says
in the report what CLIP never saw. ``long_prompt="chunk"`` is refused: neither encoder chunks.

Guidance, as the pipeline defines it:

- ``guidance_scale`` is the *distilled* guidance the transformer was trained to follow (one
  branch per step; 2.5, the model card's, when left out);
- ``true_cfg_scale`` (a request field only guidance-distilled backends take) is real
  classifier-free guidance against the negative prompt: over 1 with a negative prompt, two
  branches per step. Left out it is 1.0, off: a negative prompt without it is not used, and the
  result says so; a ``true_cfg_scale`` over 1 without a negative prompt has no effect, said too.

Size: with a photo and no size, the output is the Kontext training resolution nearest the
photo's aspect (``PREFERRED_KONTEXT_RESOLUTIONS``, 672x1568 ... 1568x672 around 1024 x 1024
pixels, the resolutions the pipeline resizes photos to), scaled to the model's native size; the
photo is centre-cropped to exactly that size, so the pipeline resizes nothing more. A size the
request gives is honoured (``max_area`` is its area, so the pipeline keeps it). Without a photo:
the native square (1024 x 1024) or the request's size.

With a mask (only the desk changes) the request runs diffusers' ``FluxKontextInpaintPipeline``
over the same modules, at the same size: the masked part redrawn from noise (``strength`` 1.0,
the pipeline's, when left out) as the instruction says. One reference image may come with a
mask: it is the pipeline's ``image_reference``, the image the masked part follows ("put this
lamp on the desk"), which the transformer then sees instead of the photo; it is centre-cropped
to the Kontext resolution nearest its own aspect. Without a mask references are refused
(``FluxKontextPipeline`` edits the photo alone), and so is ``padding_mask_crop``: diffusers
0.42's Kontext inpainting returns the redrawn box alone, never pasted back into the picture.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

from ..._exceptions import InvalidRequestError, UnsupportedOperationError
from ..._images import prepare_image
from ..._registry import register_backend
from ...prompts import EncoderFamily, LongPromptMode, PromptPlan, TextEncoderSpec
from .._base import BackendOptions, Job
from .._profile import BackendProfile, GiB, MemoryProfile
from ._options import DiffusersOptions, ImageInputs
from ._pipeline import DiffusersBackend

if TYPE_CHECKING:
    from PIL import Image

    from ..._models import GenerationRequest, Mode

__all__ = ["FLUX_KONTEXT_PARAMETERS", "FluxKontextBackend", "kontext_size"]

FLUX_KONTEXT_PARAMETERS = {  # published safetensors sizes of black-forest-labs/FLUX.1-Kontext-dev
    "transformer": 11_901_408_320,  # FluxTransformer2DModel: 19 double + 38 single blocks
    "text_encoder": 123_060_480,  # CLIP-L text model
    "text_encoder_2": 4_762_310_656,  # T5-XXL encoder (v1.1)
    "vae": 83_819_683,  # AutoencoderKL, 16 latent channels
}
"""What the memory planner sizes without the files (bfloat16: about 23.8 + 9.8 + 0.4 GB)."""

SEQUENCE_LENGTH = 512
"""T5's ``max_sequence_length``: the pipeline's default and FLUX.1's largest."""
CLIP_TOKENS = 77


def kontext_size(aspect: float, *, native: int, multiple: int) -> tuple[int, int]:
    """The Kontext training resolution nearest ``aspect`` (width / height), the one the
    pipeline resizes photos to, scaled from 1024 px to ``native`` and floored to ``multiple``."""
    from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

    _, width, height = min((abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
    scale = native / 1024
    return (
        max(multiple, int(width * scale) // multiple * multiple),
        max(multiple, int(height * scale) // multiple * multiple),
    )


@register_backend("flux-kontext")
class FluxKontextBackend(DiffusersBackend):
    """FLUX.1 Kontext in the diffusers layout: instruction edits of the photo, or txt2img."""

    description: ClassVar[str] = (
        "FLUX.1 Kontext (diffusers): edits the desk photo by instruction, keeps the room; "
        "CLIP-L + T5 (512 tokens), distilled guidance"
    )
    default_model: ClassVar[str | None] = "black-forest-labs/FLUX.1-Kontext-dev"
    options_class: ClassVar[type[BackendOptions]] = DiffusersOptions
    txt2img_class: ClassVar[str] = "FluxKontextPipeline"
    img2img_class: ClassVar[str | None] = None
    inpaint_class: ClassVar[str | None] = "FluxKontextInpaintPipeline"
    accepted_pipelines: ClassVar[frozenset[str]] = frozenset({"FluxKontextPipeline"})
    family: ClassVar[str] = "FLUX.1 Kontext"
    default_guidance: ClassVar[float] = 2.5
    """The distilled ``guidance_scale`` of FLUX.1-Kontext-dev's model card."""
    denoiser: ClassVar[str] = "transformer"
    speed_options: ClassVar[frozenset[str]] = frozenset({"compile"})
    text_encoders: ClassVar[tuple[TextEncoderSpec, ...]] = (
        TextEncoderSpec(
            name="text_encoder", family=EncoderFamily.CLIP, max_tokens=CLIP_TOKENS, pooled=True
        ),
        TextEncoderSpec(
            name="text_encoder_2",
            family=EncoderFamily.T5,
            max_tokens=SEQUENCE_LENGTH,
            tokenizers=("black-forest-labs/FLUX.1-Kontext-dev/tokenizer_2", "google/t5-v1_1-xxl"),
        ),
    )
    default_long_prompt: ClassVar[LongPromptMode] = LongPromptMode.FIT
    profile: ClassVar[BackendProfile] = BackendProfile(
        modes=("txt2img", "edit", "inpaint"),
        masks=True,
        references=1,
        gguf=True,
        loras=True,
        true_cfg=True,
        quantizable=("transformer", "text_encoder", "text_encoder_2", "vae"),
        default_quantized=("transformer",),
        saves_quantized=True,
        memory=MemoryProfile(
            parameters=FLUX_KONTEXT_PARAMETERS,
            # a 1024 px edit: 4096 photo + 4096 output + 512 text tokens through 57 blocks,
            # and the VAE encode/decode; an estimate from the architecture, not measured
            work_bytes=6 * GiB,
        ),
        demo="flux-kontext",
        notes=("one reference image, with a mask only (the masked part follows it)",),
    )

    def __init__(self, options: BackendOptions) -> None:
        super().__init__(options)
        self.default_steps = 28  # the model card's

    # -- loading -----------------------------------------------------------------------------

    def _native_size(self, pipe: Any) -> int:
        return int(pipe.default_sample_size) * int(pipe.vae_scale_factor)

    def _takes_cfg_embeds(self, pipe: Any) -> bool:
        return True

    def _size_multiple(self) -> int:
        return self.vae_scale_factor * 2  # 2x2 latent patches

    # -- prompts -----------------------------------------------------------------------------

    def prompt_encoders(self) -> list[tuple[TextEncoderSpec, Any]]:
        pipe = self._txt2img
        if pipe is None:
            self._check_open()
        return [
            (spec, getattr(pipe, spec.name.replace("text_encoder", "tokenizer")))
            for spec in self.text_encoders
        ]

    def plan_prompt(self, request: GenerationRequest) -> PromptPlan:
        if request.long_prompt is LongPromptMode.CHUNK:
            raise InvalidRequestError(
                "long_prompt='chunk' does not apply to flux-kontext: CLIP gives it only a pooled "
                f"vector and T5 reads the whole prompt up to {SEQUENCE_LENGTH} tokens. Use 'fit' "
                "(the default), 'truncate' or 'error'."
            )
        true_cfg = _true_cfg(request)
        ignored = None
        if true_cfg <= 1 and request.negative_prompt is not None:
            # no classifier-free guidance: the negative prompt is never encoded
            ignored = request.negative_prompt
            request = request.model_copy(update={"negative_prompt": None})
        plan = super().plan_prompt(request)
        if ignored is not None:
            note = (
                f"The negative prompt {ignored!r} was not used: flux-kontext guides against "
                "it only with true_cfg_scale over 1 (e.g. 1.5; two branches per step, twice "
                "the time). Its guidance_scale is the distilled guidance."
            )
            report = plan.report.model_copy(update={"warnings": [*plan.report.warnings, note]})
            plan = dataclasses.replace(plan, report=report)
        return plan

    def encode_prompt(self, pipe: Any, plan: PromptPlan, *, do_cfg: bool) -> dict[str, Any]:
        """The pipeline's own ``encode_prompt``: CLIP's pooled vector and T5's sequence."""

        def encode(text: str) -> tuple[Any, Any]:
            embeds, pooled, _ = pipe.encode_prompt(
                prompt=text,
                prompt_2=text,
                device=pipe._execution_device,
                num_images_per_prompt=1,
                max_sequence_length=SEQUENCE_LENGTH,
            )
            return embeds, pooled

        embeds, pooled = encode(plan.prompt)
        call = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        if do_cfg and plan.negative_prompt is not None:
            negative, negative_pooled = encode(plan.negative_prompt)
            call |= {
                "negative_prompt_embeds": negative,
                "negative_pooled_prompt_embeds": negative_pooled,
            }
        return call

    def _per_image(self, embeds: dict[str, Any], *, images: int) -> dict[str, Any]:
        # FLUX's pipelines repeat only the embeddings they encode themselves
        repeated = {name: value.repeat_interleave(images, dim=0) for name, value in embeds.items()}
        return {**repeated, "num_images_per_prompt": 1}

    # -- requests ----------------------------------------------------------------------------

    def _does_cfg(self, guidance: float, job: Job) -> bool:
        return _true_cfg(job.request) > 1 and job.prompt.negative_prompt is not None

    def _mode(self, job: Job, strength: float) -> Mode:
        if job.photo is None:
            return "txt2img"
        return "inpaint" if job.mask is not None else "edit"

    def _plan_size(
        self, request: GenerationRequest, photo: Image.Image | None, *, label: str = "photo"
    ) -> tuple[int, int, list[str]]:
        if photo is not None and request.width is None and request.height is None:
            aspect = photo.width / photo.height
            size = kontext_size(aspect, native=self.native_size, multiple=self._size_multiple())
            return size[0], size[1], []
        return super()._plan_size(request, photo, label=label)

    def _image_inputs(
        self, job: Job, *, mode: Mode, width: int, height: int, strength: float
    ) -> ImageInputs:
        request = job.request
        if request.strength is not None and mode != "inpaint":
            raise InvalidRequestError(
                "flux-kontext has no strength: the instruction says what changes and what "
                "stays. Leave out strength=..., and say 'keep ...' in the prompt (with a mask, "
                "strength says how much of the masked part is redrawn)."
            )
        if job.references and mode != "inpaint":
            raise UnsupportedOperationError(
                "flux-kontext takes a reference image only with a mask (FluxKontextPipeline "
                "edits the photo alone; with a mask the masked part follows the reference): "
                "add mask=... (or mask='auto'), or use 'flux2-klein' or 'qwen-image-edit' for "
                "edits with reference images."
            )
        warnings: list[str] = []
        true_cfg = _true_cfg(request)
        if true_cfg > 1 and job.prompt.negative_prompt is None:
            warnings.append(
                f"true_cfg_scale={true_cfg:g} has no effect without a negative prompt (it "
                "guides against one): add negative_prompt=..., or leave true_cfg_scale out."
            )
        if request.guidance_scale is not None and not self._guidance_embedded():
            warnings.append(
                f"guidance_scale={request.guidance_scale:g} has no effect: this model has no "
                "distilled guidance embedding. Use true_cfg_scale with a negative prompt."
            )
        # max_area: the pipeline rescales every output to it; the request's own area keeps it
        call: dict[str, Any] = {
            "height": height,
            "width": width,
            "max_area": width * height,
            "true_cfg_scale": true_cfg,
        }
        if mode == "inpaint":
            call |= self._inpaint_inputs(job, width=width, height=height)
            call |= {"strength": strength, "_auto_resize": False}
            if job.references:
                call["image_reference"] = self._reference(job.references[0])
        elif job.photo is not None:
            # the photo at exactly the output size: the pipeline then resizes nothing
            call |= {"image": prepare_image(job.photo, (width, height)), "_auto_resize": False}
        return ImageInputs(
            call=call, request_update={"true_cfg_scale": true_cfg}, warnings=warnings
        )

    def _inpaint_inputs(self, job: Job, *, width: int, height: int) -> dict[str, Any]:
        if job.request.padding_mask_crop is not None:
            raise UnsupportedOperationError(
                "flux-kontext can't redraw only the box around the mask: diffusers' "
                "FluxKontextInpaintPipeline returns that box alone, never pasted back into the "
                "picture. Leave out padding_mask_crop (the whole picture is redrawn, the room "
                "kept by the mask), or use 'flux2-klein', 'qwen-image-edit', 'sd' or 'sdxl' "
                "for padding_mask_crop."
            )
        return super()._inpaint_inputs(job, width=width, height=height)

    def _reference(self, image: Image.Image) -> Image.Image:
        """``image`` centre-cropped to the Kontext resolution nearest its aspect, at the
        model's scale (what the pipeline's ``_auto_resize`` would pick, cropped, not
        stretched): the size the pipeline then encodes it at."""
        size = kontext_size(
            image.width / image.height, native=self.native_size, multiple=self._size_multiple()
        )
        return prepare_image(image, size)

    def _guidance_embedded(self) -> bool:
        pipe = self._txt2img
        if pipe is None:
            self._check_open()
        return bool(pipe.transformer.config.guidance_embeds)


def _true_cfg(request: GenerationRequest) -> float:
    return float(request.true_cfg_scale) if request.true_cfg_scale is not None else 1.0
