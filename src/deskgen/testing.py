"""Tiny random-weight pipelines in the real Hugging Face on-disk layout, for offline tests.

```python
from deskgen.testing import make_tiny_pipeline
path = make_tiny_pipeline("sdxl", tmp_path / "tiny-sdxl")
gen = DeskGenerator("sdxl", model=str(path), device="cpu")
```

The folders are written with ``save_pretrained`` (``model_index.json``, one sub-folder per
component, safetensors weights, the real CLIP tokenizer files), so they load through exactly the
code path real hub weights take. Same arguments and seed give byte-identical weights. The images
they make are noise: they test plumbing, not quality. Needs the ``local`` extra.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Literal

from PIL import Image

from ._exceptions import MissingDependencyError
from ._quiet import quiet_logs
from .prompts._tokenizers import clip_tokenizer_dir, packaged_clip_tokenizer

__all__ = [
    "FakeAnswer",
    "FakeOpenAIServer",
    "FakeRequest",
    "TinyKind",
    "clip_tokenizer_dir",
    "make_tiny_clip",
    "make_tiny_controlnet",
    "make_tiny_depth_model",
    "make_tiny_janus",
    "make_tiny_llama",
    "make_tiny_lora",
    "make_tiny_pipeline",
    "make_tiny_tokenizer",
]

TinyKind = Literal["sdxl", "sd", "hidream"]

_MARKER = "deskgen_tiny.json"


def _built(target: Path, spec: dict[str, Any], *, overwrite: bool) -> bool:
    """Whether ``target`` already holds the tiny model ``spec`` describes (its marker file)."""
    marker = target / _MARKER
    return not overwrite and marker.is_file() and json.loads(marker.read_text()) == spec


def _require_local() -> None:
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            "deskgen.testing", extra="local", missing=[exc.name or "torch/diffusers"]
        ) from exc


def _clip_text_config(hidden: int, projection: int) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=2,
        num_hidden_layers=2,
        max_position_embeddings=77,
        layer_norm_eps=1e-5,
        hidden_act="quick_gelu",
        projection_dim=projection,
    )


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


def _tiny_sdxl(sample_size: int) -> dict[str, Any]:
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    text_hidden = 32
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
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


def _tiny_sd(sample_size: int) -> dict[str, Any]:
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
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
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    def clip() -> Any:
        config = _clip_text_config(32, 32)
        config.max_position_embeddings = 248
        return CLIPTextModelWithProjection(config)

    t5_tokenizer = make_tiny_tokenizer("t5")
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=t5_tokenizer.pad_token_id,
            eos_token_id=t5_tokenizer.eos_token_id,
            decoder_start_token_id=t5_tokenizer.pad_token_id,
        )
    )
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


_TINY_LLAMA_HIDDEN = 16


def make_tiny_llama(
    path: str | os.PathLike[str], *, seed: int = 0, overwrite: bool = False
) -> Path:
    """Write a tiny random ``LlamaForCausalLM`` with a tiny Llama-3-style tokenizer
    (`make_tiny_tokenizer`) to ``path``: HiDream's fourth text encoder (``llama_model=``)."""
    _require_local()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    target = Path(path)
    spec = {"kind": "llama", "seed": seed, "version": 1}
    if _built(target, spec, overwrite=overwrite):
        return target
    tokenizer = make_tiny_tokenizer("llama")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=_TINY_LLAMA_HIDDEN,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / _MARKER).write_text(json.dumps(spec))
    return target


_JANUS_PAD = "<\uff5c\u2581pad\u2581\uff5c>"
"""Janus-Pro's pad token, with the full-width bars DeepSeek's tokenizer has."""
_JANUS_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}<|User|>: "
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image_placeholder>\n"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n\n{% else %}<|Assistant|>: "
    "{{ message['content'][0]['text'] }}\n\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|>:{% endif %}"
)


def make_tiny_janus(
    path: str | os.PathLike[str], *, seed: int = 0, overwrite: bool = False
) -> Path:
    """Write a tiny random Janus model (``JanusForConditionalGeneration``: a Llama language
    model, a SigLIP-style vision encoder reading 20x20 photos, a VQ image decoder drawing 16x16
    images from 16 tokens) with its processor (a tiny Llama-3-style tokenizer with Janus'
    special tokens and chat template), in the ``save_pretrained`` layout."""
    _require_local()
    import torch
    from transformers import (
        JanusConfig,
        JanusForConditionalGeneration,
        JanusProcessor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

    target = Path(path)
    spec = {"kind": "janus", "seed": seed, "version": 1}
    if _built(target, spec, overwrite=overwrite):
        return target
    llama = make_tiny_tokenizer("llama")
    images = {
        "image_token": "<image_placeholder>",
        "boi_token": "<begin_of_image>",
        "eoi_token": "<end_of_image>",
    }
    backend = llama.backend_tokenizer
    backend.add_special_tokens([_JANUS_PAD, *images.values(), "<|User|>", "<|Assistant|>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=llama.bos_token,
        eos_token=llama.eos_token,
        pad_token=_JANUS_PAD,
        extra_special_tokens=images,
        model_max_length=512,
    )
    processor = JanusProcessor(
        image_processor=JanusImageProcessorPil(size={"height": 20, "width": 20}, min_size=4),
        tokenizer=tokenizer,
        chat_template=_JANUS_TEMPLATE,
        num_image_tokens=16,
    )
    config = JanusConfig(
        text_config={
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 37,
            "max_position_embeddings": 512,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "image_size": 20,
            "patch_size": 5,
            "num_image_tokens": 16,
            "hidden_size": 32,
            "projection_dim": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "mlp_ratio": 2,
        },
        vq_config={
            "embed_dim": 12,
            "num_embeddings": 64,
            "latent_channels": 12,
            "base_channels": 32,  # a GroupNorm of 32 groups: no fewer
            "channel_multiplier": [1, 1, 1],  # 4x4 tokens -> 16x16 pixels
            "num_patches": 4,
            "projection_dim": 32,  # the language model's width, as in Janus-Pro
            "image_token_embed_dim": 32,
        },
        image_token_id=tokenizer.convert_tokens_to_ids(images["image_token"]),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = JanusForConditionalGeneration(config).eval()
    generation = model.generation_config
    generation.pad_token_id = tokenizer.pad_token_id
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.generation_kwargs = {
        "boi_token_id": tokenizer.convert_tokens_to_ids(images["boi_token"])
    }
    generation.guidance_scale = 5.0
    generation._from_model_config = False  # saved as is, as Janus-Pro's generation config
    model.save_pretrained(target)
    processor.save_pretrained(target)
    (target / _MARKER).write_text(json.dumps(spec))
    return target


def make_tiny_controlnet(
    path: str | os.PathLike[str],
    *,
    base: TinyKind = "sdxl",
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


def make_tiny_depth_model(
    path: str | os.PathLike[str], *, seed: int = 0, overwrite: bool = False
) -> Path:
    """Write a tiny random-weight Depth Anything model (the architecture of deskgen's default
    depth model) with its image processor, in the ``save_pretrained`` layout. Its maps vary
    with the photo (weights drawn wide enough that the ReLU head is not all zero)."""
    _require_local()
    import torch
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessorPil,
    )

    target = Path(path)
    spec = {"kind": "depth", "seed": seed, "version": 1}
    if _built(target, spec, overwrite=overwrite):
        return target
    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=56,
        patch_size=14,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False,
        initializer_range=0.2,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 16, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        patch_size=14,
        initializer_range=0.2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DepthAnythingForDepthEstimation(config)
    processor = DPTImageProcessorPil(
        size={"height": 56, "width": 56},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    model.save_pretrained(target)
    processor.save_pretrained(target)
    (target / _MARKER).write_text(json.dumps(spec))
    return target


def make_tiny_clip(path: str | os.PathLike[str], *, seed: int = 0, overwrite: bool = False) -> Path:
    """Write a tiny random-weight CLIP model (text and vision towers) with the real CLIP
    tokenizer and an image processor, in the ``save_pretrained`` layout: what
    `deskgen.bench.ClipScorer` (``clip_model=``) loads. Its scores are meaningless numbers in
    0..100; the path is the real one."""
    _require_local()
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPProcessor,
        CLIPVisionConfig,
    )

    target = Path(path)
    spec = {"kind": "clip", "seed": seed, "version": 1}
    if _built(target, spec, overwrite=overwrite):
        return target
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_hidden_layers=2,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    config = CLIPConfig(
        text_config=_clip_text_config(32, 16).to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=packaged_clip_tokenizer(),
    )
    model.save_pretrained(target)
    processor.save_pretrained(target)
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
        kind: ``"sdxl"`` (two CLIP encoders, text-time conditioning) or ``"sd"`` (SD 1.x layout).
        path: target folder; it is reused as is when it already holds the same tiny model.
        seed: seeds the random weights (``torch.manual_seed``).
        sample_size: latent size; the native image size is ``2 * sample_size`` pixels.
        overwrite: rebuild even when the folder holds the same tiny model.
    """
    _require_local()
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    target = Path(path)
    spec = {"kind": kind, "seed": seed, "sample_size": sample_size, "version": 1}
    if _built(target, spec, overwrite=overwrite):
        return target
    if kind not in ("sdxl", "sd", "hidream"):
        raise ValueError(f"Unknown tiny pipeline kind {kind!r}: use 'sdxl', 'sd' or 'hidream'.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "sdxl":
            pipe: Any = StableDiffusionXLPipeline(**_tiny_sdxl(sample_size))
        elif kind == "sd":
            pipe = StableDiffusionPipeline(**_tiny_sd(sample_size), requires_safety_checker=False)
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

    from ._lora import canonical_safetensors

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


_CORPUS = (
    "a clean modern desk setup in a bright open office with a large monitor and a laptop",
    "a minimalist LED desk lamp on the left and a sleek wireless charger pad",
    "all cables neatly organized and hidden, calm tidy professional natural lighting",
    "a wooden desk with a plant, a keyboard, a mouse, a mug and a notebook",
    "research monitoring or visual content analysis in a collaborative lab",
)


def make_tiny_tokenizer(
    kind: Literal["t5", "llama"], path: str | os.PathLike[str] | None = None
) -> Any:
    """A tiny tokenizer with the special-token rules of T5 (EOS appended) or Llama 3 (BOS
    prepended), trained in-process on a few desk sentences. Saved to ``path`` when given
    (``save_pretrained`` layout). For tests of token counting and sequence lengths; the real
    tokenizers are large downloads.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from .demo import DEMO_PROMPT, LONG_DESCRIPTION

    # the seed's prompts too, so their words are whole tokens and counts are word-like
    corpus = [*_CORPUS, DEMO_PROMPT, LONG_DESCRIPTION]

    if kind == "t5":
        special = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
        # BPE over SentencePiece-style word pieces (Metaspace): a Unigram model trained on a
        # few sentences stays near character level, far from T5's word-like counts
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer: Any = trainers.BpeTrainer(vocab_size=800, special_tokens=list(special.values()))
        tok.train_from_iterator(corpus, trainer)
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
        )
    elif kind == "llama":
        special = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=800,
            special_tokens=list(special.values()),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(corpus, trainer)
        bos = special["bos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    else:
        raise ValueError(f"Unknown tiny tokenizer kind {kind!r}: use 't5' or 'llama'.")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **special)
    if path is not None:
        fast.save_pretrained(os.fspath(path))
    return fast


@dataclass
class FakeAnswer:
    status: int = 200
    body: Any = None
    """JSON body; ``None`` means a normal image answer for the request. The text
    `ECHO_KEY` (``"{api_key}"``) anywhere in it is replaced by the API key the request was sent
    with, as proxies that quote the key in their errors do."""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None
    """Bytes to answer with as they are, instead of a JSON body: a truncated or broken answer
    (``Content-Type`` is still ``application/json``)."""

    ECHO_KEY: ClassVar[str] = "{api_key}"


@dataclass
class FakeRequest:
    path: str
    headers: dict[str, str]
    json: dict[str, Any] | None
    parts: dict[str, tuple[str | None, bytes]]
    """Multipart fields: name -> (file name or None, raw bytes)."""


def _png_b64(size: tuple[int, int], colour: tuple[int, int, int] = (90, 120, 150)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class FakeOpenAIServer:
    """A real HTTP server on 127.0.0.1 speaking the shapes of OpenAI's Images and Chat
    Completions APIs, for offline tests of code that uses the ``openai`` backend.

    ```python
    with FakeOpenAIServer() as server:
        gen = DeskGenerator("openai", api_key="test", base_url=server.base_url)
        gen.generate(prompt="a desk")
        server.received[0].json["model"]       # what the client sent
        server.answers.append(FakeAnswer(429, {"error": {"message": "slow down"}}))
    ```
    Scripted `FakeAnswer`s are used in order; without one, image endpoints answer with small
    PNGs of the requested size / 16 and chat completions with `description`.
    """

    def __init__(self) -> None:
        self.answers: list[FakeAnswer] = []
        self.received: list[FakeRequest] = []
        self.files: dict[str, bytes] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                data = server.files.get(self.path)
                self.send_response(200 if data else 404)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                ctype = self.headers.get("Content-Type", "")
                body: dict[str, Any] | None = None
                parts: dict[str, tuple[str | None, bytes]] = {}
                if ctype.startswith("application/json"):
                    body = json.loads(raw)
                elif ctype.startswith("multipart/form-data"):
                    message = BytesParser(policy=HTTP).parsebytes(
                        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw
                    )
                    for part in message.iter_parts():
                        name = part.get_param("name", header="content-disposition")
                        payload = part.get_payload(decode=True)
                        data = payload if isinstance(payload, bytes) else b""
                        parts[str(name)] = (part.get_filename(), data)
                with server._lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    server.received.append(FakeRequest(self.path, headers, body, parts))
                    answer = server.answers.pop(0) if server.answers else FakeAnswer()
                if answer.delay:
                    time.sleep(answer.delay)
                if answer.raw is not None:
                    data = answer.raw
                else:
                    if answer.body is not None:
                        payload = answer.body
                    elif self.path.endswith("/chat/completions"):
                        payload = server.chat_answer(server.description)
                    else:
                        payload = server.image_answer(body, parts)
                    text = json.dumps(payload)
                    if answer.body is not None and FakeAnswer.ECHO_KEY in text:
                        key = headers.get("authorization", "").removeprefix("Bearer ")
                        text = text.replace(FakeAnswer.ECHO_KEY, json.dumps(key)[1:-1])
                    data = text.encode()
                # the client may have given up (a timeout test): nothing to answer then
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._answer(answer, data)

            def _answer(self, answer: FakeAnswer, data: bytes) -> None:
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in answer.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    description: dict[str, Any] = {  # noqa: RUF012
        "summary": "A cluttered wooden desk with a monitor and a laptop by a window.",
        "items": ["a monitor on a stand", "an open laptop", "a red mug", "tangled cables"],
        "keep": ["monitor on a stand", "laptop", "wooden desk"],
        "remove": ["tangled cables", "loose papers"],
        "style": "plain home office",
        "lighting": "daylight from a window on the left",
        "clutter": "high",
        "colours": ["warm wood", "off-white", "black"],
        "room": "a small home office with a window",
    }

    @staticmethod
    def chat_answer(content: Any) -> dict[str, Any]:
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "gpt-4o",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {
                        "role": "assistant",
                        "content": json.dumps(content) if content is not None else None,
                        "refusal": None,
                    },
                }
            ],
        }

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def image_answer(
        self, body: dict[str, Any] | None, parts: dict[str, tuple[str | None, bytes]]
    ) -> dict[str, Any]:
        fields = body or {k: v[1].decode() for k, v in parts.items() if v[0] is None}
        n = int(fields.get("n", 1))
        size = str(fields.get("size", "1024x1024"))
        w, h = (1024, 1024) if size == "auto" else map(int, size.split("x"))
        item: dict[str, Any] = {"b64_json": _png_b64((w // 16, h // 16))}
        if fields.get("model") == "dall-e-3":
            item["revised_prompt"] = "REVISED: " + str(fields.get("prompt", ""))[:40]
        return {"created": int(time.time()), "data": [item] * n}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
