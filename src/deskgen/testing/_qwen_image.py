"""A tiny random-weight Qwen-Image-Edit pipeline in the real Hugging Face on-disk layout.

```python
from deskgen.testing import make_tiny_qwen_image_edit, qwen_processor_without_torchvision
path = make_tiny_qwen_image_edit(tmp_path / "tiny-qwen-edit", plus=True)
with qwen_processor_without_torchvision():  # only needed where torchvision is missing
    pipe = QwenImageEditPlusPipeline.from_pretrained(path)
```

``save_pretrained`` writes what ``Qwen/Qwen-Image-Edit`` (``plus=False``) and
``Qwen/Qwen-Image-Edit-2509`` (``plus=True``) hold: ``model_index.json`` and the folders
``scheduler``, ``text_encoder`` (``Qwen2_5_VLForConditionalGeneration``, vision tower included),
``tokenizer`` (``Qwen2Tokenizer``), ``processor`` (``Qwen2VLProcessor``), ``transformer`` and
``vae``. The tokenizer is a byte-level BPE trained in-process on the pipelines' prompt template
and a few desk sentences, with Qwen2-VL's special tokens (in Qwen's order) and chat template:
the template's system part is 64 tokens, as with the real tokenizer, so the pipelines'
``prompt_template_encode_start_idx`` (64) drops exactly that. Needs the ``local`` extra.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["make_tiny_qwen_image_edit", "qwen_processor_without_torchvision"]

_SYSTEM = (
    "Describe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the "
    "image. Generate a new image that meets the user's requirements while maintaining "
    "consistency with the original input where appropriate."
)
"""The system prompt of both edit pipelines' ``prompt_template_encode``."""

_SPECIAL_NAMES = (
    "endoftext im_start im_end object_ref_start object_ref_end box_start box_end quad_start "
    "quad_end vision_start vision_end vision_pad image_pad video_pad"
)
_SPECIAL = tuple(f"<|{name}|>" for name in _SPECIAL_NAMES.split())
"""Qwen2-VL's special tokens, in the order of their ids (151643.. in the real vocabulary)."""

_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen2-VL's (and Qwen2.5-VL's) chat template, as in transformers' Qwen2-VL processor tests."""

# scheduler/scheduler_config.json of Qwen/Qwen-Image, Qwen-Image-Edit and -Edit-2509 (the same
# values are copied in ostris/ai-toolkit's and SimpleTuner's Qwen-Image code)
_SCHEDULER: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}

_TEXT_HIDDEN = 32
"""The text encoder's width: the transformer's ``joint_attention_dim``."""
_Z_DIM = 4


def qwen_processor_without_torchvision() -> contextlib.AbstractContextManager[None]:
    """Let ``Qwen2VLProcessor`` be built and loaded without torchvision while the block runs
    (the backend's own `deskgen.backends.diffusers.qwen_image_edit.processor_without_torchvision`:
    the processor has no video processor; with torchvision installed this does nothing)."""
    from ..backends.diffusers.qwen_image_edit import processor_without_torchvision

    return processor_without_torchvision()


def _tokenizer() -> Any:
    """A Qwen2Tokenizer whose words are whole tokens for the templates and desk prompts."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from ..demo import DEMO_PROMPT, LONG_DESCRIPTION
    from . import _CORPUS

    corpus = [
        f"system\n{_SYSTEM}\nuser\nassistant\nYou are a helpful assistant.\n",
        "make the desk tidy\nPicture 1: Picture 2: Picture 3: Video 1: ",
        *_CORPUS,
        DEMO_PROMPT,
        LONG_DESCRIPTION,
    ]
    bpe = Tokenizer(models.BPE())  # normalizer and pre-tokenizer as Qwen2Tokenizer's
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=2000,  # more than the corpus has words: every word of it is one token
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    for token in _SPECIAL:  # after the words, in Qwen's order, as in the real vocabulary
        vocab[token] = len(vocab)
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(merge) for merge in model["merges"]],
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=list(_SPECIAL[1:]),
        model_max_length=32768,
    )


_PATCH, _MERGE = 14, 2
"""Qwen2.5-VL's vision patches (14 pixels) and merge (2x2 patches per image token)."""
_PIXELS = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
"""The image processor's min/max pixels: at most 8x8 patches, 16 image tokens a picture (the
real ones: 3136 and 12845056)."""


def _processor(tokenizer: Any) -> Any:
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )
    from transformers.utils import is_torchvision_available

    sizes = {"patch_size": _PATCH, "temporal_patch_size": 2, "merge_size": _MERGE}
    extra: dict[str, Any] = {}
    if is_torchvision_available():  # transformers 5's video processors need torchvision
        from transformers import Qwen2VLVideoProcessor

        extra["video_processor"] = Qwen2VLVideoProcessor(size=dict(_PIXELS), **sizes)
    with qwen_processor_without_torchvision():
        return Qwen2VLProcessor(
            image_processor=Qwen2VLImageProcessorPil(size=dict(_PIXELS), **sizes),
            tokenizer=tokenizer,
            chat_template=_CHAT_TEMPLATE,
            **extra,
        )


def _components(tokenizer: Any) -> dict[str, Any]:
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = dict(zip(_SPECIAL, tokenizer.convert_tokens_to_ids(list(_SPECIAL)), strict=True))
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": _TEXT_HIDDEN,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            # Qwen2.5-VL's multimodal rope, its sections (16, 24, 24) of 64 scaled to 8
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]},
            "rope_theta": 1000000.0,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "patch_size": _PATCH,
            "spatial_merge_size": _MERGE,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "out_hidden_size": _TEXT_HIDDEN,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * _Z_DIM,  # 2x2 latent patches, packed
        out_channels=_Z_DIM,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_TEXT_HIDDEN,
        guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),  # frame, height, width: the real (16, 56, 56) scaled
    )
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=_Z_DIM,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],  # three downsamples: 8x, as the real VAE
        latents_mean=[0.0] * _Z_DIM,
        latents_std=[1.0] * _Z_DIM,
    )
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(**_SCHEDULER),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "processor": _processor(tokenizer),
        "transformer": transformer,
    }


def make_tiny_qwen_image_edit(
    path: str | os.PathLike[str], *, plus: bool = False, seed: int = 0, overwrite: bool = False
) -> Path:
    """Write a tiny random-weight ``QwenImageEditPipeline`` (``plus=True``:
    ``QwenImageEditPlusPipeline``, Qwen-Image-Edit-2509's, several input images) to ``path``.

    Args:
        path: target folder; it is reused as is when it already holds the same tiny model.
        plus: the Plus pipeline's ``model_index.json`` (the folders are the same).
        seed: seeds the random weights: same arguments, byte-identical weights.
        overwrite: rebuild even when the folder holds the same tiny model.
    """
    from . import _MARKER, _built, _require_local

    _require_local()
    import torch
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline

    target = Path(path)
    kind = "qwen-image-edit-plus" if plus else "qwen-image-edit"
    spec = {"kind": kind, "seed": seed, "version": 1}
    if _built(target, spec, overwrite=overwrite):
        return target
    tokenizer = _tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = _components(tokenizer)
    cls: Any = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    pipe = cls(**components)
    with qwen_processor_without_torchvision():
        pipe.save_pretrained(target, safe_serialization=True)
    video = target / "processor" / "video_preprocessor_config.json"
    if not video.exists():  # no torchvision: what its video processor would be read from
        config: dict[str, Any] = {"video_processor_type": "Qwen2VLVideoProcessor"}
        config |= {"patch_size": _PATCH, "temporal_patch_size": 2, "merge_size": _MERGE}
        config |= {"size": _PIXELS, "processor_class": "Qwen2VLProcessor"}
        video.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (target / _MARKER).write_text(json.dumps(spec))
    return target
