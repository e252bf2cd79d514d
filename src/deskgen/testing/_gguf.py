"""`make_tiny_gguf`: the denoiser of a tiny pipeline folder written as a GGUF file, quantized as
real GGUF converters do it (city96's ComfyUI-GGUF ``tools/convert.py``), for offline tests of
``QuantConfig(method="gguf", file=...)``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from ._common import _MARKER, _require_local

__all__ = ["GGUFQuant", "make_tiny_gguf"]

GGUFQuant = Literal["Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "F16"]
"""The types `make_tiny_gguf` writes: those the gguf package quantizes to (its K-quants only
dequantize)."""

_ARCHITECTURES = {
    "QwenImageTransformer2DModel": "qwen_image",
    "HiDreamImageTransformer2DModel": "hidream",
    "FluxTransformer2DModel": "flux",
    "Flux2Transformer2DModel": "flux2",
}
"""``general.architecture`` as converters name the families (the UNets: `_architecture`)."""
_SPEC_KEY = "deskgen.tiny_spec"


def _architecture(cls_name: str, config: dict[str, Any]) -> str:
    if cls_name == "UNet2DConditionModel":
        return "sdxl" if config.get("addition_embed_type") == "text_time" else "sd1"
    return _ARCHITECTURES.get(cls_name, cls_name.lower())


def _denoiser(index: dict[str, Any]) -> str:
    for name in ("transformer", "unet"):
        entry = index.get(name)
        if isinstance(entry, list) and entry[0] is not None:
            return name
    raise ValueError("The model folder has neither a transformer nor a unet to write as GGUF.")


def _existing_spec(path: Path) -> dict[str, Any] | None:
    from gguf import GGUFReader

    try:
        field = GGUFReader(path, "r").get_field(_SPEC_KEY)
    except Exception:  # not a GGUF file, or a damaged one: not ours
        return None
    if field is None or not field.data:
        return None
    spec: dict[str, Any] = json.loads(bytes(field.parts[field.data[0]]).decode("utf-8"))
    return spec


def make_tiny_gguf(
    model_path: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    quant: GGUFQuant = "Q8_0",
    component: Literal["transformer", "unet"] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the denoiser of the tiny pipeline folder ``model_path`` (`make_tiny_pipeline`) to
    the GGUF file ``path``, in the diffusers layout (its tensor names are the model's, which
    diffusers' ``from_single_file`` loads as they are).

    As converters do: the weights of linear layers are quantized to ``quant`` when their rows
    divide into its blocks (32 weights); 1-D tensors (biases, norms) stay F32, everything else
    (convolutions, rows that don't divide) F16. Tiny models get no small-tensor threshold
    (city96 keeps tensors of up to 1024 weights in F32: nearly all of a tiny model's).

    Args:
        component: ``transformer`` or ``unet``; ``None``: the one the folder has.
        overwrite: replace a file there; without it a file written by the same call is reused
            and any other is refused.

    Raises:
        FileExistsError: ``path`` holds another file and ``overwrite`` is false.
    """
    _require_local()
    import gguf
    import numpy as np
    import torch

    from .._loading import component_class

    source = Path(model_path)
    target = Path(path)
    index = json.loads((source / "model_index.json").read_text(encoding="utf-8"))
    name = component or _denoiser(index)
    marker = source / _MARKER
    built = json.loads(marker.read_text()) if marker.is_file() else None
    spec = {"model": built, "component": name, "quant": quant, "format": 1}
    if target.exists() and not overwrite:
        if _existing_spec(target) == spec:
            return target
        raise FileExistsError(
            f"{str(target)!r} exists and holds another file: pass overwrite=True to replace it."
        )
    cls: Any = component_class(index[name], name=name)
    model = cls.from_pretrained(source, subfolder=name, dtype=torch.float32)
    linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    qtype = gguf.GGMLQuantizationType[quant]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    writer = gguf.GGUFWriter(path=None, arch=_architecture(type(model).__name__, model.config))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string(_SPEC_KEY, json.dumps(spec, sort_keys=True))
    for key, tensor in model.state_dict().items():
        data = tensor.detach().to(torch.float32).numpy()
        owner, _, leaf = key.rpartition(".")
        if data.ndim == 1:
            kind = gguf.GGMLQuantizationType.F32
        elif (
            owner in linear and leaf == "weight" and data.ndim == 2 and data.shape[-1] % block == 0
        ):
            kind = qtype
        else:
            kind = gguf.GGMLQuantizationType.F16
        writer.add_tensor(
            key, np.ascontiguousarray(gguf.quants.quantize(data, kind)), raw_dtype=kind
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    writer.write_header_to_file(path=partial)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(target)
    return target
