"""``sdxl``: Stable Diffusion XL through diffusers: txt2img without a photo, img2img with one,
inpainting with a mask (only the desk redrawn, the room kept), with the base model or an
inpainting checkpoint such as ``diffusers/stable-diffusion-xl-1.0-inpainting-0.1``."""

from __future__ import annotations

from typing import Any, ClassVar

from ..._registry import register_backend
from ...prompts import EncoderFamily, PromptPlan, TextEncoderSpec
from .._profile import BackendProfile, GiB, MemoryProfile
from ._chunked import encode_chunked_sdxl
from ._pipeline import DiffusersBackend

__all__ = ["SDXL_PARAMETERS", "SDXLBackend"]

SDXL_PARAMETERS = {  # stabilityai/stable-diffusion-xl-base-1.0
    "unet": 2_567_463_684,
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
    "vae": 83_653_863,
}
"""Published parameter counts of SDXL base's components (what the planner sizes without files)."""


@register_backend("sdxl")
class SDXLBackend(DiffusersBackend):
    """SDXL 1.0 and fine-tunes in the diffusers layout (``StableDiffusionXLPipeline``); masked
    requests run ``StableDiffusionXLInpaintPipeline`` over the same modules. An inpainting
    checkpoint (9-channel UNet) loads too, and then serves masked requests only."""

    description: ClassVar[str] = "Stable Diffusion XL (diffusers): txt2img, img2img and inpainting"
    default_model: ClassVar[str | None] = "stabilityai/stable-diffusion-xl-base-1.0"
    txt2img_class: ClassVar[str] = "StableDiffusionXLPipeline"
    img2img_class: ClassVar[str] = "StableDiffusionXLImg2ImgPipeline"
    inpaint_class: ClassVar[str | None] = "StableDiffusionXLInpaintPipeline"
    accepted_pipelines: ClassVar[frozenset[str]] = frozenset(
        {
            "StableDiffusionXLPipeline",
            "StableDiffusionXLImg2ImgPipeline",
            "StableDiffusionXLInpaintPipeline",
        }
    )
    family: ClassVar[str] = "Stable Diffusion XL"
    default_guidance: ClassVar[float] = 5.0
    text_encoders: ClassVar[tuple[TextEncoderSpec, ...]] = (
        TextEncoderSpec(name="text_encoder", family=EncoderFamily.CLIP, max_tokens=77),
        TextEncoderSpec(name="text_encoder_2", family=EncoderFamily.CLIP, max_tokens=77),
    )
    default_negative_preset: ClassVar[str | None] = "sdxl_default"
    profile: ClassVar[BackendProfile] = BackendProfile(
        modes=("txt2img", "img2img", "inpaint"),
        masks=True,
        gguf=True,
        single_file=True,
        loras=True,
        quantizable=("unet", "text_encoder", "text_encoder_2", "vae"),
        default_quantized=("unet",),
        saves_quantized=True,
        presets=("quality", "balanced", "fast"),
        memory=MemoryProfile(parameters=SDXL_PARAMETERS, work_bytes=4 * GiB),
        demo="sdxl",
        notes=(
            "Inpainting (mask=...) runs StableDiffusionXLInpaintPipeline (default strength "
            "0.9999, as diffusers': the masked part redrawn from almost pure noise, the base "
            "model's UNet works); an inpainting checkpoint such as "
            "diffusers/stable-diffusion-xl-1.0-inpainting-0.1 loads too, for masked requests "
            "only.",
        ),
    )

    def encode_prompt(self, pipe: Any, plan: PromptPlan, *, do_cfg: bool) -> dict[str, Any]:
        device = pipe._execution_device
        if plan.chunked:
            return encode_chunked_sdxl(pipe, plan, do_cfg=do_cfg, device=device)
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=plan.prompt,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=do_cfg,
            negative_prompt=plan.negative_prompt,
        )
        return {
            "prompt_embeds": embeds,
            "negative_prompt_embeds": negative,
            "pooled_prompt_embeds": pooled,
            "negative_pooled_prompt_embeds": negative_pooled,
        }
