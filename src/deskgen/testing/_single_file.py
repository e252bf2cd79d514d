"""Tiny single-file checkpoints in the original (LDM, civitai) layout, converted in-process from
the tiny diffusers pipelines: the reverse of diffusers' ``from_single_file`` conversion, ported
from diffusers' ``scripts/convert_diffusers_to_original_stable_diffusion.py`` and
``scripts/convert_diffusers_to_original_sdxl.py`` (Apache-2.0), with the block counts read from
each component's config instead of the real models' hard-coded ones.

```python
file = make_tiny_single_file("sdxl", tmp_path / "tiny-sdxl.safetensors")
gen = DeskGenerator("sdxl", model=str(file), config=str(tiny_single_file_config(file)))
```
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from ._common import _require_local

__all__ = ["ldm_state_dict", "make_tiny_single_file", "tiny_single_file_config"]

_SPEC_KEY = "deskgen_tiny"
"""The safetensors metadata entry that records what was built (a rebuild is skipped when it
matches)."""

_RESNET = (  # (diffusers, LDM) inside a UNet resnet
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's text-time embedding
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_OPENCLIP = (  # (diffusers, OpenCLIP) for the parts of a CLIP text model
    ("text_model.encoder.layers.", "transformer.resblocks."),
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    (".mlp.fc1.", ".mlp.c_fc."),
    (".mlp.fc2.", ".mlp.c_proj."),
    (".self_attn.", ".attn."),
    ("text_model.final_layer_norm.", "ln_final."),
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
)


def _resnet(rest: str) -> str:
    for diffusers, ldm in _RESNET:
        if rest.startswith(diffusers + "."):
            return ldm + rest[len(diffusers) :]
    return rest


def _unet_key(key: str, config: Mapping[str, Any]) -> str:
    """The LDM name of a diffusers ``UNet2DConditionModel`` weight."""
    per_block = config["layers_per_block"]
    if not isinstance(per_block, int):
        raise ValueError("only UNets with one layers_per_block for every block are converted")
    for diffusers, ldm in _UNET_TOP.items():
        if key.startswith(diffusers + "."):
            return ldm + key[len(diffusers) :]
    if match := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = 1 + block * (per_block + 1) + layer
        return (
            f"input_blocks.{index}.0.{_resnet(rest)}"
            if kind == "resnets"
            else (f"input_blocks.{index}.1.{rest}")
        )
    if match := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(match[1]) + 1) * (per_block + 1)}.0.op.{match[2]}"
    if match := re.match(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(match[1])}.{_resnet(match[2])}"
    if match := re.match(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{match[1]}"
    if match := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = block * (per_block + 1) + layer
        return (
            f"output_blocks.{index}.0.{_resnet(rest)}"
            if kind == "resnets"
            else (f"output_blocks.{index}.1.{rest}")
        )
    if match := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(match[1])
        # after the attention when the block has one, else right after the resnet
        slot = 2 if config["up_block_types"][block].startswith("CrossAttn") else 1
        return f"output_blocks.{block * (per_block + 1) + per_block}.{slot}.conv.{match[2]}"
    raise ValueError(f"no LDM name for the UNet weight {key!r}")


def _vae_key(key: str, config: Mapping[str, Any]) -> str:
    """The LDM name of a diffusers ``AutoencoderKL`` weight."""
    last = len(config["block_out_channels"]) - 1
    key = key.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
    if match := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{match[1]}.block.{match[2]}.{match[3]}"
    if match := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
        return f"encoder.down.{match[1]}.downsample.{match[2]}"
    if match := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{last - int(match[1])}.block.{match[2]}.{match[3]}"
    if match := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        return f"decoder.up.{last - int(match[1])}.upsample.{match[2]}"
    if match := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{match[3]}"
    if match := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
        return f"{match[1]}.mid.attn_1.{_VAE_ATTENTION[match[2]]}.{match[3]}"
    return key  # conv_in, conv_out, norm_out, quant_conv, post_quant_conv


def _clip_weights(weights: Mapping[str, Any]) -> dict[str, Any]:
    """A transformers CLIP text model's weights as LDM checkpoints hold them
    (``text_model.`` first: transformers flattened ``CLIPTextModel``)."""
    return {
        (key if key.startswith(("text_model.", "text_projection")) else f"text_model.{key}"): value
        for key, value in weights.items()
    }


def _openclip_weights(weights: Mapping[str, Any]) -> dict[str, Any]:
    """A ``CLIPTextModelWithProjection``'s weights in OpenCLIP's layout (SDXL's second
    encoder): query/key/value fused into ``in_proj``, the projection transposed."""
    import torch

    out: dict[str, Any] = {}
    fused: dict[str, dict[str, Any]] = {}
    for key, value in _clip_weights(weights).items():
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
            continue
        if match := re.match(r"(.+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            fused.setdefault(f"{match[1]}.self_attn.in_proj_{match[3]}", {})[match[2]] = value
            continue
        out[key] = value
    for key, parts in fused.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    renamed = {}
    for key, value in out.items():
        for diffusers, openclip in _OPENCLIP:
            key = key.replace(diffusers, openclip)
        renamed[key] = value
    return renamed


def _component(folder: Path, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors.torch import load_file

    weights: dict[str, Any] = {}
    for file in sorted((folder / name).glob("*.safetensors")):
        weights.update(load_file(str(file)))
    config = json.loads((folder / name / "config.json").read_text(encoding="utf-8"))
    return weights, config


def ldm_state_dict(
    folder: str | os.PathLike[str],
    *,
    open_clip: bool = False,
    weights: Callable[[str], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The weights of the diffusers SD 1.x/2.x or SDXL pipeline ``folder`` renamed to the
    original single-file layout (``model.diffusion_model.*``, ``first_stage_model.*``, and
    ``cond_stage_model.transformer.*``, or with ``open_clip`` SD 2.x's OpenCLIP
    ``cond_stage_model.model.*``, or SDXL's two ``conditioner.embedders.*``).

    ``weights``: reads one component's state dict by name instead of its safetensors files
    (e.g. a model built on the meta device from configs alone, to check key names and sizes).
    """
    root = Path(folder)
    index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))

    def read(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        state, config = _component(root, name) if weights is None else ({}, {})
        if weights is not None:
            state = weights(name)
            config = json.loads((root / name / "config.json").read_text(encoding="utf-8"))
        return state, config

    unet, unet_config = read("unet")
    vae, vae_config = read("vae")
    text, _ = read("text_encoder")
    out = {f"model.diffusion_model.{_unet_key(k, unet_config)}": v for k, v in unet.items()}
    for key, value in vae.items():
        name = _vae_key(key, vae_config)
        if ".mid.attn_1." in name and name.endswith(
            ("q.weight", "k.weight", "v.weight", "proj_out.weight")
        ):
            value = value.reshape(*value.shape, 1, 1)  # LDM's attention is 1x1 convolutions
        out[f"first_stage_model.{name}"] = value
    if str(index.get("_class_name", "")).startswith("StableDiffusionXL"):
        text_2, _ = read("text_encoder_2")
        out.update(
            {f"conditioner.embedders.0.transformer.{k}": v for k, v in _clip_weights(text).items()}
        )
        out.update(
            {f"conditioner.embedders.1.model.{k}": v for k, v in _openclip_weights(text_2).items()}
        )
    elif open_clip:
        out.update({f"cond_stage_model.model.{k}": v for k, v in _openclip_weights(text).items()})
    else:
        out.update({f"cond_stage_model.transformer.{k}": v for k, v in _clip_weights(text).items()})
    return out


def tiny_single_file_config(path: str | os.PathLike[str]) -> Path:
    """The tiny diffusers folder `make_tiny_single_file` converted ``path`` from (by default):
    what ``config=`` takes for it (the tiny sizes are not the shipped configs')."""
    file = Path(path)
    return file.with_name(f"{file.stem}-diffusers")


def make_tiny_single_file(
    kind: Literal["sd", "sd2", "sdxl"],
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    overwrite: bool = False,
    diffusers_path: str | os.PathLike[str] | None = None,
) -> Path:
    """Write a tiny random-weight single-file checkpoint of ``kind`` in the original layout to
    the ``.safetensors`` file ``path`` and return the path: ``"sd"`` (SD 1.x: a CLIP text
    encoder), ``"sd2"`` (the same tiny SD model with its text encoder in SD 2.x's OpenCLIP
    layout) or ``"sdxl"`` (SDXL base: CLIP and OpenCLIP).

    It is `make_tiny_pipeline` ``("sd" or "sdxl", seed=seed)`` converted: the same seed gives
    the same weights as the diffusers folder, so both load to the same pixels. That folder is
    written to ``diffusers_path`` (reused when it holds the same tiny model), by default beside
    the file (`tiny_single_file_config`); pass it as ``config=``.
    """
    _require_local()
    from safetensors import safe_open
    from safetensors.torch import save

    from .._lora import canonical_safetensors
    from ._diffusers import make_tiny_pipeline

    if kind not in ("sd", "sd2", "sdxl"):
        raise ValueError(f"Unknown tiny single-file kind {kind!r}: use 'sd', 'sd2' or 'sdxl'.")
    target = Path(path)
    if target.suffix != ".safetensors":
        raise ValueError(f"{str(target)!r}: a single-file checkpoint is a .safetensors file")
    folder = Path(diffusers_path) if diffusers_path is not None else tiny_single_file_config(target)
    spec = json.dumps({"kind": kind, "seed": seed, "version": 1})
    if not overwrite and target.is_file() and (folder / "model_index.json").is_file():
        with safe_open(str(target), "pt") as file:
            if (file.metadata() or {}).get(_SPEC_KEY) == spec:
                return target
    make_tiny_pipeline("sdxl" if kind == "sdxl" else "sd", folder, seed=seed, overwrite=overwrite)
    weights = ldm_state_dict(folder, open_clip=kind == "sd2")
    state = {key: value.contiguous() for key, value in weights.items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    data = save(state, metadata={"format": "pt", _SPEC_KEY: spec})
    target.write_bytes(canonical_safetensors(data))  # the same build, the same bytes
    return target
