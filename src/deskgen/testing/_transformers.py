"""Tiny random-weight transformers models in the ``save_pretrained`` layout: a Llama (HiDream's
fourth encoder), Janus, Depth Anything, CLIP, and tiny T5 / Llama-3 tokenizers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from ..prompts._tokenizers import packaged_clip_tokenizer
from ._common import _CORPUS, _MARKER, _built, _require_local

__all__ = [
    "make_tiny_clip",
    "make_tiny_depth_model",
    "make_tiny_janus",
    "make_tiny_llama",
    "make_tiny_tokenizer",
]

_TINY_LLAMA_HIDDEN = 16
"""The tiny Llama's width: the tiny HiDream transformer's second caption channel."""


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


def _tiny_t5(width: int) -> tuple[Any, Any]:
    """A tiny random-weight T5 encoder of ``width`` (two layers, four heads) and the tiny T5
    tokenizer it reads (`make_tiny_tokenizer`), as FLUX and HiDream pipelines hold them."""
    from transformers import T5Config, T5EncoderModel

    tokenizer = make_tiny_tokenizer("t5")
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=width,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config), tokenizer


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

    from ..demo import DEMO_PROMPT, LONG_DESCRIPTION

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
