"""``sd``: Stable Diffusion 1.x / 2.x through diffusers, txt2img and img2img."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from .._registry import register_backend
from ._diffusers import DiffusersBackend

if TYPE_CHECKING:
    from .._models import GenerationRequest

__all__ = ["SDBackend"]


@register_backend("sd")
class SDBackend(DiffusersBackend):
    """SD 1.5, SD 2.1 and fine-tunes in the diffusers layout (``StableDiffusionPipeline``)."""

    description: ClassVar[str] = "Stable Diffusion 1.x/2.x (diffusers): txt2img and img2img"
    default_model: ClassVar[str | None] = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    txt2img_class: ClassVar[str] = "StableDiffusionPipeline"
    img2img_class: ClassVar[str] = "StableDiffusionImg2ImgPipeline"
    accepted_pipelines: ClassVar[frozenset[str]] = frozenset(
        {"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"}
    )
    family: ClassVar[str] = "Stable Diffusion 1.x/2.x"
    default_guidance: ClassVar[float] = 7.5

    def encode_prompt(
        self, pipe: Any, request: GenerationRequest, *, do_cfg: bool
    ) -> dict[str, Any]:
        embeds, negative = pipe.encode_prompt(
            prompt=request.prompt,
            device=pipe._execution_device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=do_cfg,
            negative_prompt=request.negative_prompt,
        )
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative}
