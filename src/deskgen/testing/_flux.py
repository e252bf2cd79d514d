"""A tiny random-weight FLUX.1 Kontext pipeline in the real on-disk layout.

```python
from deskgen.testing import make_tiny_flux_kontext
path = make_tiny_flux_kontext(tmp_path / "tiny-kontext")
gen = DeskGenerator("flux-kontext", model=str(path), device="cpu")
```

``FluxKontextPipeline``'s components at toy size: CLIP-L (the packaged CLIP vocabulary, 77
positions, its pooled vector only), T5 with a tiny T5 tokenizer (512 tokens), the FLUX
transformer with distilled guidance embeddings (as FLUX.1-Kontext-dev), a two-block
``AutoencoderKL`` with FLUX's scaling and shift, and FLUX's dynamic-shift flow-matching scheduler.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ._common import _MARKER, _built, _require_local
from ._transformers import _clip_text_config, _tiny_t5

__all__ = ["make_tiny_flux_kontext"]

_TEXT = 32
"""Width of the tiny CLIP and T5: the transformer's pooled projection and joint attention."""


def _components() -> dict[str, Any]:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel

    from ..prompts._tokenizers import packaged_clip_tokenizer

    t5, t5_tokenizer = _tiny_t5(_TEXT)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 2x2 patches of the VAE's 4 latent channels, packed
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=_TEXT,
        pooled_projection_dim=_TEXT,
        guidance_embeds=True,  # FLUX.1-dev and Kontext-dev: distilled guidance
        axes_dims_rope=(2, 2, 4),
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=4096,
        max_shift=1.15,
        shift=3.0,
        use_dynamic_shifting=True,
    )
    return {
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": CLIPTextModel(_clip_text_config(_TEXT, _TEXT)),
        "tokenizer": packaged_clip_tokenizer("<|endoftext|>"),
        "text_encoder_2": t5,
        "tokenizer_2": t5_tokenizer,
        "transformer": transformer,
        "image_encoder": None,
        "feature_extractor": None,
    }


def make_tiny_flux_kontext(
    path: str | os.PathLike[str], *, seed: int = 0, overwrite: bool = False
) -> Path:
    """Write a tiny random-weight ``FluxKontextPipeline`` to ``path`` and return the path.

    Args:
        path: target folder; it is reused as is when it already holds the same tiny model.
        seed: seeds the random weights: same arguments, byte-identical weights.
        overwrite: rebuild even when the folder holds the same tiny model.
    """
    _require_local()
    import torch
    from diffusers import FluxKontextPipeline

    from .._quiet import quiet_logs

    target = Path(path)
    spec = {"kind": "flux-kontext", "seed": seed, "version": 1}
    if _built(target, spec, overwrite=overwrite):
        return target
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = FluxKontextPipeline(**_components())
    with quiet_logs():  # "image_encoder=None cannot be saved": Kontext runs without IP-Adapter
        pipe.save_pretrained(target, safe_serialization=True)
    (target / _MARKER).write_text(json.dumps(spec))
    return target
