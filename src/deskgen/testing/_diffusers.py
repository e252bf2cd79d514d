"""Tiny random-weight diffusers pipelines (SDXL, SD 1.x and their inpainting checkpoints,
HiDream; Qwen-Image-Edit through `_qwen_image`), ControlNets that fit them, and LoRAs for them,
in the real on-disk layout."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from .._quiet import quiet_logs
from ..prompts._tokenizers import packaged_clip_tokenizer
from ._common import _MARKER, _built, _require_local
from ._transformers import _TINY_LLAMA_HIDDEN, _clip_text_config, _tiny_t5

__all__ = ["TinyKind", "make_tiny_controlnet", "make_tiny_lora", "make_tiny_pipeline"]

TinyKind = Literal[
    "sdxl",
    "sd",
    "sdxl-inpaint",
    "sd-inpaint",
    "hidream",
    "qwen-image-edit",
    "qwen-image-edit-plus",
    "flux-kontext",
    "flux2-klein",
    "flux2-klein-base",
]
"""The kinds `make_tiny_pipeline` writes."""


_SD_CLASSES = {
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl-inpaint": "StableDiffusionXLInpaintPipeline",
    "sd": "StableDiffusionPipeline",
    "sd-inpaint": "StableDiffusionInpaintPipeline",
}
"""The pipeline class each SD/SDXL kind is saved as (its ``model_index.json`` ``_class_name``)."""


def _vae(block_out: tuple[int, ...]) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(block_out),
        up_block_types=("UpDecoderBlock2D",) * len(block_out),
        block_out_channels=block_out,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.13025,
    )


def _tiny_sdxl(sample_size: int, in_channels: int = 4) -> dict[str, Any]:
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    text_hidden = 32
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + text_hidden,
        cross_attention_dim=2 * text_hidden,
        norm_num_groups=8,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    return {
        "unet": unet,
        "scheduler": scheduler,
        "vae": _vae((16, 32)),
        "text_encoder": CLIPTextModel(_clip_text_config(text_hidden, text_hidden)),
        "tokenizer": packaged_clip_tokenizer("<|endoftext|>"),
        "text_encoder_2": CLIPTextModelWithProjection(_clip_text_config(text_hidden, text_hidden)),
        "tokenizer_2": packaged_clip_tokenizer("!"),
        "image_encoder": None,
        "feature_extractor": None,
    }


def _tiny_sd(sample_size: int, in_channels: int = 4) -> dict[str, Any]:
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        cross_attention_dim=32,
        norm_num_groups=8,
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        skip_prk_steps=True,
        set_alpha_to_one=False,
    )
    return {
        "unet": unet,
        "scheduler": scheduler,
        "vae": _vae((16, 32)),
        "text_encoder": CLIPTextModel(_clip_text_config(32, 32)),
        "tokenizer": packaged_clip_tokenizer("<|endoftext|>"),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def _tiny_hidream() -> dict[str, Any]:
    """HiDream's layout at toy size: two CLIP encoders with projections (248 positions, as
    HiDream's long CLIPs), a T5 encoder with a tiny T5 tokenizer, the MoE transformer; the Llama
    encoder lives in its own folder (`make_tiny_llama`), as HiDream's does."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from diffusers import HiDreamImageTransformer2DModel as Transformer
    from transformers import CLIPTextModelWithProjection

    def clip() -> Any:
        config = _clip_text_config(32, 32)
        config.max_position_embeddings = 248
        return CLIPTextModelWithProjection(config)

    t5, t5_tokenizer = _tiny_t5(32)
    transformer = Transformer(
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_channels=[32, _TINY_LLAMA_HIDDEN],  # T5's and Llama's widths
        text_emb_dim=64,  # the two CLIP projections, concatenated
        num_routed_experts=4,
        num_activated_experts=2,
        axes_dims_rope=(4, 2, 2),
        max_resolution=(128, 128),  # patches of the native 128x128 image, padded when oblong
        llama_layers=(0, 1),
    )
    vae = AutoencoderKL(
        block_out_channels=(32,), norm_num_groups=8, scaling_factor=0.3611, shift_factor=0.1159
    )
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        "vae": vae,
        "text_encoder": clip(),
        "tokenizer": packaged_clip_tokenizer("<|endoftext|>"),
        "text_encoder_2": clip(),
        "tokenizer_2": packaged_clip_tokenizer("<|endoftext|>"),
        "text_encoder_3": t5,
        "tokenizer_3": t5_tokenizer,
        "text_encoder_4": None,
        "tokenizer_4": None,
        "transformer": transformer,
    }


def make_tiny_controlnet(
    path: str | os.PathLike[str],
    *,
    base: Literal["sdxl", "sd"] = "sdxl",
    seed: int = 0,
    sample_size: int = 32,
    overwrite: bool = False,
) -> Path:
    """Write a tiny random-weight ``ControlNetModel`` that fits the tiny ``base`` pipeline.

    Made with ``ControlNetModel.from_unet`` like real ControlNets, then its zero convolutions
    (the output projections, zero at the start of real training) get random weights, so the
    control image really changes the output. ``base="sd"`` makes one for the tiny SD pipeline,
    which does *not* fit SDXL (for mismatch tests).
    """
    _require_local()
    import torch
    from diffusers import ControlNetModel

    target = Path(path)
    spec = {"kind": f"controlnet-{base}", "seed": seed, "sample_size": sample_size, "version": 1}
    if _built(target, spec, overwrite=overwrite):
        return target
    if base not in ("sdxl", "sd"):
        raise ValueError(f"Unknown tiny ControlNet base {base!r}: use 'sdxl' or 'sd'.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = (_tiny_sdxl if base == "sdxl" else _tiny_sd)(sample_size)["unet"]
        # the tiny VAE halves the size: one stride-2 step in the conditioning embedding
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
        zero_convs = [*net.controlnet_down_blocks, net.controlnet_mid_block]
        zero_convs.append(net.controlnet_cond_embedding.conv_out)
        with torch.no_grad():
            for conv in zero_convs:
                conv.weight.normal_(0.0, 1.0)
                conv.bias.normal_(0.0, 0.1)
    net.save_pretrained(target, safe_serialization=True)
    (target / _MARKER).write_text(json.dumps(spec))
    return target


def make_tiny_pipeline(
    kind: TinyKind,
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    sample_size: int = 32,
    overwrite: bool = False,
) -> Path:
    """Write a tiny random-weight pipeline of ``kind`` to ``path`` and return the path.

    Args:
        kind: ``"sdxl"`` (two CLIP encoders, text-time conditioning), ``"sd"`` (SD 1.x layout),
            ``"sdxl-inpaint"`` / ``"sd-inpaint"`` (inpainting checkpoints: the same layout with a
            9-channel UNet, saved as ``StableDiffusionXLInpaintPipeline`` /
            ``StableDiffusionInpaintPipeline``), ``"hidream"`` (four text encoders, the Llama
            apart: `make_tiny_llama`), or
            ``"qwen-image-edit"`` / ``"qwen-image-edit-plus"`` (`make_tiny_qwen_image_edit`),
            ``"flux-kontext"`` (`make_tiny_flux_kontext`), ``"flux2-klein"`` (step-distilled) /
            ``"flux2-klein-base"`` (`make_tiny_flux2_klein`).
        path: target folder; it is reused as is when it already holds the same tiny model.
        seed: seeds the random weights (``torch.manual_seed``).
        sample_size: latent size; the native image size is ``2 * sample_size`` pixels (SDXL and
            SD only; the other kinds have their own fixed sizes).
        overwrite: rebuild even when the folder holds the same tiny model.
    """
    if kind in ("qwen-image-edit", "qwen-image-edit-plus"):
        from ._qwen_image import make_tiny_qwen_image_edit

        return make_tiny_qwen_image_edit(
            path, plus=kind == "qwen-image-edit-plus", seed=seed, overwrite=overwrite
        )
    if kind == "flux-kontext":
        from ._flux import make_tiny_flux_kontext

        return make_tiny_flux_kontext(path, seed=seed, overwrite=overwrite)
    if kind in ("flux2-klein", "flux2-klein-base"):
        from ._flux2 import make_tiny_flux2_klein

        return make_tiny_flux2_klein(
            path, distilled=kind == "flux2-klein", seed=seed, overwrite=overwrite
        )
    _require_local()
    import diffusers
    import torch

    target = Path(path)
    spec = {"kind": kind, "seed": seed, "sample_size": sample_size, "version": 1}
    if _built(target, spec, overwrite=overwrite):
        return target
    if kind not in ("sdxl", "sd", "sdxl-inpaint", "sd-inpaint", "hidream"):
        raise ValueError(
            f"Unknown tiny pipeline kind {kind!r}: use 'sdxl', 'sd', 'sdxl-inpaint', "
            "'sd-inpaint', 'hidream', 'qwen-image-edit', 'qwen-image-edit-plus', "
            "'flux-kontext', 'flux2-klein' or 'flux2-klein-base'."
        )
    # inpainting UNets take the mask and the masked image's latents besides the latents
    channels = 9 if kind.endswith("-inpaint") else 4
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind.startswith("sdxl"):
            pipe: Any = getattr(diffusers, _SD_CLASSES[kind])(**_tiny_sdxl(sample_size, channels))
        elif kind.startswith("sd"):
            pipe = getattr(diffusers, _SD_CLASSES[kind])(
                **_tiny_sd(sample_size, channels), requires_safety_checker=False
            )
        else:
            from diffusers import HiDreamImagePipeline

            pipe = HiDreamImagePipeline(**_tiny_hidream())
    with quiet_logs():  # "text_encoder_4=None cannot be saved": HiDream's Llama is apart
        pipe.save_pretrained(target, safe_serialization=True)
    (target / _MARKER).write_text(json.dumps(spec))
    return target


_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def make_tiny_lora(
    model: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    layout: Literal["kohya", "peft"] = "kohya",
    rank: int = 4,
    alpha: float | None = None,
    seed: int = 0,
    text_encoders: bool = True,
    trigger_words: tuple[str, ...] = (),
) -> Path:
    """Write a random LoRA for the tiny pipeline folder ``model`` to the file ``path``.

    It changes every attention projection of the UNet (``to_q/k/v/out.0``) and, with
    ``text_encoders``, of the CLIP encoders (``q/k/v/out_proj``), with random low-rank deltas
    big enough to change the images visibly.

    Args:
        layout: ``"kohya"`` (``lora_unet_...``/``lora_te1_...`` keys with ``.alpha``, civitai
            metadata ``ss_base_model_version`` and ``ss_tag_frequency``) or ``"peft"`` (diffusers'
            ``unet.<module>.lora_A.weight`` keys, as `deskgen.train_lora` writes).
        alpha: the kohya alpha (scale ``alpha / rank``); ``None``: equal to the rank.
        trigger_words: recorded in the metadata as kohya does (``ss_tag_frequency``: tags in
            every caption of a folder, ``ss_dataset_dirs``: its image count).
    """
    _require_local()
    import torch
    from safetensors.torch import save

    from .._lora import canonical_safetensors

    folder = Path(model)
    index = json.loads((folder / "model_index.json").read_text())
    xl = str(index.get("_class_name", "")).startswith("StableDiffusionXL")
    tensors: dict[str, torch.Tensor] = {}
    generator = torch.Generator().manual_seed(seed)
    alpha = float(rank if alpha is None else alpha)

    def add(component: str, module: str, fan_in: int, fan_out: int) -> None:
        down = torch.randn(rank, fan_in, generator=generator) * 0.5
        up = torch.randn(fan_out, rank, generator=generator) * 0.5
        if layout == "kohya":
            prefix = {"unet": "lora_unet", "text_encoder": "lora_te1" if xl else "lora_te"}.get(
                component, "lora_te2"
            )
            name = (
                module
                if component == "unet"
                else f"text_model.{module.removeprefix('text_model.')}"
            )
            key = f"{prefix}_{name.replace('.', '_')}"
            tensors[f"{key}.lora_down.weight"] = down
            tensors[f"{key}.lora_up.weight"] = up
            tensors[f"{key}.alpha"] = torch.tensor(alpha)
        else:
            tensors[f"{component}.{module}.lora_A.weight"] = down
            tensors[f"{component}.{module}.lora_B.weight"] = up

    components = [("unet", _UNET_TARGETS)]
    if text_encoders:
        components.append(("text_encoder", _TEXT_TARGETS))
        if xl:
            components.append(("text_encoder_2", _TEXT_TARGETS))
    for component, targets in components:
        weights = _read_weights(folder / component)
        for name, value in weights.items():
            module = name.removesuffix(".weight")
            if name.endswith(".weight") and value.ndim == 2 and module.endswith(targets):
                add(component, module, value.shape[1], value.shape[0])
    metadata = {"ss_network_dim": str(rank), "ss_network_alpha": str(alpha)}
    if layout == "kohya":
        metadata["ss_base_model_version"] = "sdxl_base_v1-0" if xl else "sd_v1"
        if trigger_words:  # in every one of 10 captions, beside a generic tag
            tags = dict.fromkeys(trigger_words, 10) | {"photo": 4}
            metadata["ss_tag_frequency"] = json.dumps({"10_desk": tags})
            metadata["ss_dataset_dirs"] = json.dumps(
                {"10_desk": {"n_repeats": 10, "img_count": 10}}
            )
    elif trigger_words:
        metadata["modelspec.trigger_phrase"] = ", ".join(trigger_words)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(canonical_safetensors(save(tensors, metadata=metadata)))
    return target


def _read_weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    weights: dict[str, Any] = {}
    for file in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(str(file)))
    return weights
