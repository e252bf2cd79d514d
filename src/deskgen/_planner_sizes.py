"""What the memory planner reads without loading a weight: a pipeline folder's safetensors
headers (components saved quantized by their files), a single-file checkpoint's header, a GGUF
denoiser's header, and the bytes a weight takes quantized each way.

Imports nothing heavy: headers are read with the standard library (safetensors) or the gguf
package's reader (its tensors are mapped, not read).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ._planner import MemoryMode
    from .backends._profile import Capability
    from .quant._config import QuantConfig

__all__ = [
    "BYTES_PER_WEIGHT",
    "Offload",
    "Plan",
    "cached_folder",
    "check_method",
    "folder_parameters",
    "four_bit_notes",
    "gguf_bytes",
    "ladder",
    "safetensors_elements",
    "saved_quantized_bytes",
    "single_file_backends",
    "single_file_sizes",
]

BYTES_PER_WEIGHT: dict[str, float] = {
    "int8": 1.0,
    "fp8": 1.0,
    "int4": 0.5 + 4 / 128,  # quanto: a float16 scale and shift per group of 128
    # bitsandbytes 4-bit with double quantization (what deskgen asks for): the 4-bit data,
    # a uint8 scale per block of 64 weights, a float32 scale per 256 of those
    "nf4": 0.5 + 1 / 64 + 4 / (64 * 256),
    "fp4": 0.5 + 1 / 64 + 4 / (64 * 256),
    "int8 (bitsandbytes)": 1.0 + 4 / 3072,  # LLM.int8(): a float32 scale per row of ~3072
    "Q4_K": 144 / 256,  # a GGUF Q4_K (or Q4_0) file: 4.5 bits a weight
}
"""Bytes a quantized linear weight takes, scales included."""


def safetensors_elements(path: Path) -> int:
    from ._lora import safetensors_header

    shapes, _ = safetensors_header(path)
    return sum(math.prod(shape) for shape in shapes.values())


def saved_quantized_bytes(folder: Path) -> dict[str, int]:
    """The components a folder holds quantized (`save_quantized`), by their files' bytes."""
    from .quant._saved import QUANTIZED_RECORD, QUANTIZED_WEIGHTS

    return {
        component.name: (component / QUANTIZED_WEIGHTS).stat().st_size
        for component in sorted(p for p in folder.iterdir() if p.is_dir())
        if (component / QUANTIZED_RECORD).is_file() and (component / QUANTIZED_WEIGHTS).is_file()
    }


def folder_parameters(folder: Path) -> dict[str, int]:
    """Elements per component of a pipeline folder, from its safetensors headers (components
    saved quantized left out)."""
    from .quant._saved import QUANTIZED_RECORD

    found: dict[str, int] = {}
    for component in sorted(p for p in folder.iterdir() if p.is_dir()):
        if (component / QUANTIZED_RECORD).is_file():
            continue
        files = list(component.glob("*.safetensors"))
        variants = [f for f in files if ".fp16." in f.name]
        chosen = [f for f in files if f not in variants] or variants
        total = sum(safetensors_elements(f) for f in chosen)
        if total:
            found[component.name] = total
    return found


def cached_folder(model: str) -> Path | None:
    """The Hugging Face cache's snapshot folder of ``model``, if its index is cached."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - comes with diffusers
        return None
    try:
        path = try_to_load_from_cache(model, "model_index.json")
    except ValueError:  # not a hub id (a path): nothing cached under it
        return None
    return Path(path).parent if isinstance(path, str) else None


def _single_file(model: str) -> Path | None:
    """The local path of a single-file checkpoint ``model`` (a file, or a hub file in the
    cache); ``None`` when it is none, or a hub file not cached."""
    from .backends.diffusers._single_file import is_single_file

    if not is_single_file(model):
        return None
    local = Path(os.path.expanduser(model))
    if local.is_file():
        return local
    parts = model.split("/")
    if len(parts) < 3:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache("/".join(parts[:2]), "/".join(parts[2:]))
    except (ImportError, ValueError):
        return None
    return Path(cached) if isinstance(cached, str) else None


def single_file_sizes(model: str) -> dict[str, int] | None:
    """Parameters per component of a single-file ``.safetensors`` checkpoint, from its header
    (``unet``, ``vae``, ``text_encoder``, ``text_encoder_2``); ``None``: ``model`` is no
    single file here."""
    path = _single_file(model)
    if path is None or path.suffix.lower() != ".safetensors":
        return None
    from .backends.diffusers._single_file import single_file_parameters

    return single_file_parameters(path)


def single_file_backends(model: str) -> tuple[str, list[str]] | None:
    """``(pipeline class, backends that load it from a single file)`` for a single-file
    checkpoint here, from its header's family; ``None``: no such file here."""
    path = _single_file(model)
    if path is None or path.suffix.lower() != ".safetensors":
        return None
    from ._registry import backends_for_pipeline, backends_with
    from .backends.diffusers._single_file import family_of, read_header

    family = family_of(read_header(path), name=model)
    takers = set(backends_with("single_file"))
    return family.pipeline, [b for b in backends_for_pipeline(family.pipeline) if b in takers]


def gguf_bytes(config: QuantConfig, width: int, *, cache_dir: str | None = None) -> tuple[int, str]:
    """What the GGUF file of ``config`` occupies loaded in a dtype of ``width`` bytes (its
    quantized tensors as stored, the F32/F16 ones cast), from its header, and its types.

    Raises:
        ModelNotFoundError: no such file (a hub file not in the cache: how to get it).
        ModelLoadError: not a GGUF file.
        MissingDependencyError: the gguf package is missing.
    """
    from .quant._gguf import gguf_label, read_gguf, resolve_gguf

    assert config.file is not None
    header = read_gguf(resolve_gguf(config.file, cache_dir=cache_dir, download=False))
    return header.loaded_bytes(width), gguf_label(header.tensors)


def quantized_bytes(parameters: int, width: int, share: float, key: str) -> int:
    """A component of ``parameters`` weights (``width`` bytes each) with the linear ``share``
    quantized the ``key`` way (`BYTES_PER_WEIGHT`)."""
    return int(parameters * width * (1 - share) + parameters * share * BYTES_PER_WEIGHT[key])


def denoiser_of(cls: Any, parameters: dict[str, int]) -> str | None:
    """The backend's denoiser component (its class's ``denoiser``), if the model has it."""
    name = getattr(cls, "denoiser", None)
    if isinstance(name, str) and name in parameters:
        return name
    return next((n for n in ("transformer", "unet") if n in parameters), None)


Offload = Literal["none", "model", "sequential"]
Plan = tuple[list[str], Offload, bool, str]
"""A candidate: the components to quantize, the offload, VAE tiling, the weight type."""


def ladder(
    mode: MemoryMode, on_gpu: bool, denoiser: list[str], large: list[str], *, bnb: bool
) -> list[Plan]:
    """The candidates ``mode`` tries, thriftiest last (bitsandbytes: nf4 before offload)."""
    if mode == "max-speed":
        return [([], "none", False, "int8")]
    if mode == "low":
        if bnb:
            return [(large, "model", True, "nf4")]
        return [(large, "sequential" if on_gpu else "none", True, "int8")]
    plans: list[Plan] = [
        ([], "none", False, "int8"),
        (denoiser, "none", False, "int8"),
        (large, "none", True, "int8"),
    ]
    if bnb:
        plans += [(denoiser, "none", True, "nf4"), (large, "none", True, "nf4")]
    if on_gpu:
        plans += [
            ([], "model", True, "int8"),
            (denoiser, "model", True, "int8"),
            (large, "model", True, "int8"),
        ]
        plans.append((large, "model", True, "nf4") if bnb else (large, "sequential", True, "int8"))
    return plans


def check_method(config: QuantConfig, backend: str, profile: Any) -> None:
    """Refuse a method the backend's profile does not take, naming those that do."""
    from ._exceptions import ConfigError
    from ._registry import backends_with, either
    from .quant._config import methods_taken

    if config.method in methods_taken(profile):
        return
    capability: Capability = "gguf" if config.method == "gguf" else "quantization"
    raise ConfigError(
        f"The {backend!r} backend does not take QuantConfig(method={config.method!r}): it takes "
        f"{', '.join(methods_taken(profile)) or 'no QuantConfig'}; "
        f"{either(backends_with(capability))} take {config.method}."
    )


def four_bit_notes(
    profile: Any, parameters: dict[str, int], width: int, main: str | None, *, share: float
) -> list[str]:
    """Where int8 is not enough: what 4-bit weights would make of the denoiser, by the methods
    the backend takes (nf4 through bitsandbytes on CUDA GPUs, a GGUF Q4 file)."""
    if main is None:
        return []
    from .backends._profile import GiB
    from .quant._config import methods_taken

    taken = methods_taken(profile)
    ways = []
    if "bitsandbytes" in taken:
        nf4 = quantized_bytes(parameters[main], width, share, "nf4")
        ways.append(
            f"about {nf4 / GiB:.1f} GiB in nf4 (bitsandbytes, CUDA GPUs: plan with "
            "method='bitsandbytes')"
        )
    if "gguf" in taken:
        q4 = quantized_bytes(parameters[main], width, share, "Q4_K")
        ways.append(
            f"about {q4 / GiB:.1f} GiB as a GGUF Q4_K file (QuantConfig(method='gguf', file=...))"
        )
    if not ways:
        return []
    return [f"int8 is not enough here; with 4-bit weights the {main} takes " + ", or ".join(ways)]
