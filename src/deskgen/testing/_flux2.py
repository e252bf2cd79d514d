"""A tiny random-weight FLUX.2 [klein] pipeline in the real Hugging Face on-disk layout.

```python
from deskgen.testing import make_tiny_flux2_klein
path = make_tiny_flux2_klein(tmp_path / "tiny-klein")                     # FLUX.2-klein-4B's
base = make_tiny_flux2_klein(tmp_path / "tiny-klein-base", distilled=False)  # -base-4B's
pipe = Flux2KleinPipeline.from_pretrained(path)
```

``save_pretrained`` writes what ``black-forest-labs/FLUX.2-klein-4B`` holds: ``model_index.json``
(``Flux2KleinPipeline``, with ``is_distilled``: ``true`` for the step-distilled models, ``false``
for the base ones) and the folders ``scheduler`` (``FlowMatchEulerDiscreteScheduler``),
``text_encoder`` (``Qwen3ForCausalLM``), ``tokenizer`` (``Qwen2Tokenizer``), ``transformer``
(``Flux2Transformer2DModel``) and ``vae`` (``AutoencoderKLFlux2``).

What is kept from the real models, because the pipeline depends on it:

- the text encoder has 28 layers (8 wide), so that the hidden states the pipeline stacks
  (``text_encoder_out_layers``, 9, 18 and 27 by default) exist; the transformer's
  ``joint_attention_dim`` is three times the encoder's width, as 7680 is 3 x 2560 for Qwen3-4B;
- the tokenizer has Qwen3's chat template (the part a single user message uses, thinking
  switched off by ``enable_thinking=False`` as the pipeline asks), Qwen's special tokens and
  the ``<think>``/``</think>`` tokens; its words come from the same in-process BPE as the tiny
  Qwen-Image tokenizer (`deskgen.testing.make_tiny_qwen_image_edit`);
- the VAE downsamples 8x (four blocks) with a 2x2 patchified latent and its batch norm, so
  sizes are multiples of 16 as for the real model.

The VAE has no mid-block attention (a 1024 px photo would make it quadratic on the CPU). Needs
the ``local`` extra.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["make_tiny_flux2_klein"]

QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)
"""What Qwen3's chat template renders for plain-text messages without tools: the same text, for
the pipeline's one user message, as the real template."""

_THINK = ("<think>", "</think>")
"""Qwen3's reasoning markers: added (not special) tokens in its vocabulary."""

_TEXT_HIDDEN = 8
_TEXT_LAYERS = 28
"""One more than the deepest hidden state the pipeline reads by default (layer 27)."""
_LATENT_CHANNELS = 4
"""The VAE's latent channels; the transformer sees 2x2 patches of them (16 channels)."""

# FLUX's flow-matching scheduler settings: dynamic shifting on (the pipeline passes ``mu``,
# computed from the image's sequence length and the step count)
_SCHEDULER: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}


def _tokenizer() -> Any:
    """The tiny Qwen tokenizer with Qwen3's thinking markers and chat template."""
    from ._qwen_image import _tokenizer as qwen_tokenizer

    tokenizer = qwen_tokenizer()
    tokenizer.add_tokens(list(_THINK))
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def _components(tokenizer: Any) -> dict[str, Any]:
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    pad, end = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=_TEXT_HIDDEN,
        intermediate_size=16,
        num_hidden_layers=_TEXT_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=4,
        max_position_embeddings=1024,  # the pipeline pads every prompt to 512 tokens
        tie_word_embeddings=True,  # as Qwen3-4B
        bos_token_id=pad,
        eos_token_id=end,
        pad_token_id=pad,
    )
    text_encoder = Qwen3ForCausalLM(config).eval()
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * _LATENT_CHANNELS,  # 2x2 latent patches, packed
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * _TEXT_HIDDEN,  # three hidden states stacked
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),  # time, height, width, layer: the real (32, 32, 32, 32)
        guidance_embeds=False,  # klein has no guidance embedding
    )
    vae = AutoencoderKLFlux2(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),  # four blocks: 8x down, as the real VAE
        layers_per_block=1,
        latent_channels=_LATENT_CHANNELS,
        norm_num_groups=4,
        mid_block_add_attention=False,
    )
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(**_SCHEDULER),
        "vae": vae.eval(),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "transformer": transformer.eval(),
    }


def make_tiny_flux2_klein(
    path: str | os.PathLike[str], *, distilled: bool = True, seed: int = 0, overwrite: bool = False
) -> Path:
    """Write a tiny random-weight ``Flux2KleinPipeline`` to ``path``.

    Args:
        path: target folder; it is reused as is when it already holds the same tiny model.
        distilled: ``model_index.json``'s ``is_distilled``: ``True`` as FLUX.2-klein-4B/-9B
            (step-distilled: 4 steps, no classifier-free guidance), ``False`` as the
            undistilled FLUX.2-klein-base-4B/-9B. The weights are the same either way.
        seed: seeds the random weights: same arguments, byte-identical weights.
        overwrite: rebuild even when the folder holds the same tiny model.
    """
    from . import _MARKER, _built, _require_local

    _require_local()
    import torch
    from diffusers import Flux2KleinPipeline

    target = Path(path)
    kind = "flux2-klein" if distilled else "flux2-klein-base"
    spec = {"kind": kind, "seed": seed, "version": 1}
    if _built(target, spec, overwrite=overwrite):
        return target
    tokenizer = _tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = _components(tokenizer)
    pipe = Flux2KleinPipeline(**components, is_distilled=distilled)
    pipe.save_pretrained(target, safe_serialization=True)
    (target / _MARKER).write_text(json.dumps(spec))
    return target
