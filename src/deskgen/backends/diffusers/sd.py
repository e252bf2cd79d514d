"""``sd``: Stable Diffusion 1.x / 2.x through diffusers: txt2img, img2img, and inpainting
(only the masked desk redrawn, the room kept) with the base model or an inpainting checkpoint
such as ``stable-diffusion-v1-5/stable-diffusion-inpainting``."""

from __future__ import annotations

from typing import Any, ClassVar

from ..._registry import register_backend
from ...prompts import EncoderFamily, PromptPlan, TextEncoderSpec
from .._profile import BackendProfile, GiB, MemoryProfile
from ._chunked import encode_chunked_sd
from ._pipeline import DiffusersBackend

__all__ = ["SDBackend"]


@register_backend("sd")
class SDBackend(DiffusersBackend):
    """SD 1.5, SD 2.1 and fine-tunes in the diffusers layout (``StableDiffusionPipeline``);
    masked requests run ``StableDiffusionInpaintPipeline`` over the same modules. An inpainting
    checkpoint (9-channel UNet) loads too, and then serves masked requests only."""

    description: ClassVar[str] = (
        "Stable Diffusion 1.x/2.x (diffusers): txt2img, img2img and inpainting"
    )
    default_model: ClassVar[str | None] = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    txt2img_class: ClassVar[str] = "StableDiffusionPipeline"
    img2img_class: ClassVar[str] = "StableDiffusionImg2ImgPipeline"
    inpaint_class: ClassVar[str | None] = "StableDiffusionInpaintPipeline"
    accepted_pipelines: ClassVar[frozenset[str]] = frozenset(
        {
            "StableDiffusionPipeline",
            "StableDiffusionImg2ImgPipeline",
            "StableDiffusionInpaintPipeline",
        }
    )
    family: ClassVar[str] = "Stable Diffusion 1.x/2.x"
    default_guidance: ClassVar[float] = 7.5
    text_encoders: ClassVar[tuple[TextEncoderSpec, ...]] = (
        TextEncoderSpec(name="text_encoder", family=EncoderFamily.CLIP, max_tokens=77),
    )
    default_negative_preset: ClassVar[str | None] = "photo_default"
    profile: ClassVar[BackendProfile] = BackendProfile(
        modes=("txt2img", "img2img", "inpaint"),
        masks=True,
        gguf=True,
        single_file=True,
        loras=True,
        quantizable=("unet", "text_encoder", "vae"),
        default_quantized=("unet",),
        saves_quantized=True,
        presets=("quality", "balanced", "fast"),
        memory=MemoryProfile(
            parameters={  # stable-diffusion-v1-5
                "unet": 859_520_964,
                "text_encoder": 123_060_480,
                "vae": 83_653_863,
            },
            work_bytes=int(2.5 * GiB),
            published_models=("runwayml/stable-diffusion-v1-5",),
        ),
        demo="sd",
        notes=(
            "Inpainting (mask=...) runs StableDiffusionInpaintPipeline (default strength 1.0: "
            "the masked part redrawn from noise); an inpainting checkpoint such as "
            "stable-diffusion-v1-5/stable-diffusion-inpainting loads too, for masked requests "
            "only.",
        ),
    )

    def encode_prompt(self, pipe: Any, plan: PromptPlan, *, do_cfg: bool) -> dict[str, Any]:
        device = pipe._execution_device
        if plan.chunked:
            return encode_chunked_sd(pipe, plan, do_cfg=do_cfg, device=device)
        embeds, negative = pipe.encode_prompt(
            prompt=plan.prompt,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=do_cfg,
            negative_prompt=plan.negative_prompt,
        )
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative}
