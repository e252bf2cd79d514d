"""Weight-only quantization of a torch module, and what its weights really occupy."""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from .._exceptions import ConfigError, MissingDependencyError

__all__ = [
    "BnbWeights",
    "QuantBackend",
    "QuantMethod",
    "QuantWeights",
    "WeightBits",
    "check_bitsandbytes",
    "check_gguf",
    "check_supported",
    "installed",
    "library_weights",
    "logical_elements",
    "module_bytes",
    "quantize_weights",
]

WeightBits = Literal["int8", "int4", "fp8"]
"""What optimum-quanto and torchao quantize weights to."""
BnbWeights = Literal["nf4", "fp4", "int8"]
"""What bitsandbytes quantizes linear weights to: 4-bit NormalFloat or float (blocks of 64
with a scale each) or LLM.int8() (one scale per row)."""
QuantWeights = Literal["int8", "int4", "fp8", "nf4", "fp4"]
"""Every weight type `deskgen.QuantConfig` names."""
QuantBackend = Literal["auto", "quanto", "torchao"]
QuantMethod = Literal["quanto", "torchao", "gguf", "bitsandbytes"]
"""How `deskgen.QuantConfig` quantizes: a library that quantizes a loaded module's weights
(quanto, torchao), one that quantizes them as they load (bitsandbytes), or a file whose
weights are quantized already (gguf)."""


def _available(backend: str) -> bool:
    module = "optimum.quanto" if backend == "quanto" else "torchao"
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # "optimum" itself missing
        return False


def resolve_backend(backend: QuantBackend) -> Literal["quanto", "torchao"]:
    """The library ``backend`` means here: ``auto`` takes optimum-quanto (int8 and int4 on CPU
    and GPU), then torchao."""
    if backend == "auto":
        for name in ("quanto", "torchao"):
            if _available(name):
                return name
        raise MissingDependencyError(
            "Quantization", extra="quanto", missing=["optimum-quanto (or torchao)"]
        )
    if not _available(backend):
        package = "optimum-quanto" if backend == "quanto" else "torchao"
        raise MissingDependencyError(
            f"Quantization with {backend}", extra=backend, missing=[package]
        )
    return backend


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (found, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ModuleNotFoundError, ValueError):  # a parent missing, or a module without a spec
        return False


def check_gguf() -> None:
    """Raise `MissingDependencyError` (the ``gguf`` extra) unless the gguf reader is installed."""
    if not installed("gguf"):
        raise MissingDependencyError(
            "GGUF weights (QuantConfig(method='gguf'))", extra="gguf", missing=["gguf"]
        )


def check_bitsandbytes(device: str) -> None:
    """Refuse bitsandbytes before any weight loads where it can't run: not installed, or no
    CUDA/XPU device to put its weights on (diffusers' bitsandbytes quantizer needs one; a
    CPU-only torch build has none). ``device``: the generator's, resolved (``cuda:0``...).

    Raises:
        MissingDependencyError: bitsandbytes is not installed (names the extra).
        ConfigError: the device is not a CUDA/XPU GPU, or torch sees none.
    """
    if not installed("bitsandbytes"):
        raise MissingDependencyError(
            "bitsandbytes quantization (QuantConfig(method='bitsandbytes'))",
            extra="bitsandbytes",
            missing=["bitsandbytes"],
        )
    import torch

    xpu = getattr(torch, "xpu", None)
    gpu = torch.cuda.is_available() or bool(xpu is not None and xpu.is_available())
    if not gpu or not device.startswith(("cuda", "xpu")):
        where = (
            f"the device is {device!r}"
            if gpu
            else f"torch {torch.__version__} sees no CUDA or XPU GPU here"
        )
        raise ConfigError(
            "bitsandbytes quantizes weights as they load onto a CUDA (or XPU) GPU, and "
            f"{where}. On a GPU machine use device='cuda' with "
            "QuantConfig(method='bitsandbytes'); on this one use a GGUF file of the denoiser "
            "(QuantConfig(method='gguf', file=...)), or quanto/torchao int8 "
            "(QuantConfig(method='quanto')), which run on the CPU."
        )


def library_weights(weights: str | None) -> WeightBits:
    """``weights`` as quanto/torchao take them (`QuantConfig` has checked them)."""
    if weights not in ("int8", "int4", "fp8"):
        raise ConfigError(
            f"weights={weights!r} is not a quanto/torchao weight type: use 'int8', 'int4' or "
            "'fp8' (nf4/fp4 are bitsandbytes': QuantConfig(method='bitsandbytes'))."
        )
    return weights  # type: ignore[return-value]


def check_supported(
    weights: WeightBits, backend: QuantBackend, *, activations: str | None = None
) -> str:
    """The library that will quantize to ``weights``, or the error it would end in, before any
    weight loads. deskgen quantizes weights in system memory, before moving them to the GPU:
    torchao's int4 layouts need the mslk kernels and CUDA tensors, so int4 goes to quanto.

    Raises:
        MissingDependencyError: no library installed (names the extra).
        ConfigError: torchao asked for int4.
    """
    used = resolve_backend(backend)
    if activations is not None and (used, weights, activations) != ("torchao", "int8", "int8"):
        raise ConfigError(
            f"Quantized activations ({activations}) with {used} {weights} weights are not "
            "supported: torchao's dynamic int8 activations go with int8 weights "
            "(QuantConfig(method='torchao', weights='int8', activations='int8')); quanto's "
            "need calibration, which deskgen does not run. Leave activations=None."
        )
    if used == "torchao" and weights == "int4":
        raise ConfigError(
            "torchao's int4 weights need its CUDA kernels (the mslk package) on GPU tensors, "
            "and deskgen quantizes in system memory before the move: use quanto for int4 "
            "(QuantConfig(method='quanto', weights='int4'), or quantization_backend='quanto' "
            "for hidream; pip install 'deskgen[quanto]'), or int8/fp8 weights."
        )
    return used


def quantize_weights(
    module: Any,
    *,
    weights: WeightBits,
    backend: QuantBackend = "auto",
    activations: Literal["int8"] | None = None,
    exclude: tuple[str, ...] = (),
    group_size: int | None = None,
) -> str:
    """Quantize the weights of ``module``'s layers in place and return the library used.

    optimum-quanto: ``quantize`` + ``freeze`` with ``qint8``/``qint4``/``qfloat8`` (its linear
    and convolution layers), on any device. torchao: ``Int8WeightOnlyConfig`` /
    ``Float8WeightOnlyConfig`` / ``Int4WeightOnlyConfig`` on linear layers (int4 needs a CUDA GPU
    and its kernels), or ``Int8DynamicActivationInt8WeightConfig`` with ``activations="int8"``.
    ``exclude``: module names or fnmatch patterns (``"*proj_out"``) left in full precision.
    ``group_size`` (int4): the most weights a scale covers (see `QuantConfig.group_size`).

    Raises:
        MissingDependencyError: the library is not installed (names the extra).
        ConfigError: the library can't quantize that way here (torchao int4 without a GPU).
    """
    used = check_supported(weights, backend, activations=activations)
    if used == "quanto":
        from optimum.quanto import freeze, qfloat8, qint4, qint8, quantize

        qtype = {"int8": qint8, "int4": qint4, "fp8": qfloat8}[weights]
        quantize(module, weights=qtype, exclude=list(exclude) or None)
        if weights == "int4" and group_size is not None:
            set_group_sizes(module, group_size)
        freeze(module)
        if weights == "int4":
            contiguous_inputs(module)
        return used
    import fnmatch

    import torch
    from torchao.quantization import (
        Float8WeightOnlyConfig,
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        quantize_,
    )

    config: Any
    if activations == "int8":
        config = Int8DynamicActivationInt8WeightConfig()
    elif weights == "int8":
        config = Int8WeightOnlyConfig()
    elif weights == "fp8":
        config = Float8WeightOnlyConfig()
    else:
        config = Int4WeightOnlyConfig(group_size=group_size or 128)

    def chosen(layer: Any, name: str) -> bool:
        return isinstance(layer, torch.nn.Linear) and not any(
            fnmatch.fnmatchcase(name, pattern) for pattern in exclude
        )

    try:
        quantize_(module, config, filter_fn=chosen)
    except (ImportError, NotImplementedError, RuntimeError) as exc:
        raise ConfigError(
            f"torchao could not quantize to {weights} here ({type(exc).__name__}: {exc}). "
            "torchao's int4 weights need its CUDA kernels (the mslk package) on GPU tensors: "
            "use weights='int8', or quanto for int4 on any device (QuantConfig(method='quanto'), "
            "or quantization_backend='quanto' for hidream)."
        ) from exc
    return used


def quanto_group(in_features: int, group_size: int) -> int | None:
    """The largest multiple of 32 up to ``group_size`` that divides ``in_features`` (``None``:
    none does, or the layer is no wider than a group: one scale per row)."""
    size = group_size // 32 * 32
    while size >= 32:
        if in_features > size and in_features % size == 0:
            return size
        size -= 32
    return None


def set_group_sizes(module: Any, group_size: int) -> dict[str, int | None]:
    """Give each of quanto's int4 layers in ``module`` (quantized, not frozen yet) the group of
    `quanto_group`; returns them by module name (what a saved model must restore)."""
    from optimum.quanto import qint4
    from optimum.quanto.nn import QModuleMixin

    sizes: dict[str, int | None] = {}
    for name, layer in module.named_modules():
        if isinstance(layer, QModuleMixin) and layer.weight_qtype == qint4:
            out_features = layer.weight.shape[0]
            layer.weight_group_size = quanto_group(layer.weight.numel() // out_features, group_size)
            sizes[name] = layer.weight_group_size
    return sizes


def _contiguous(_layer: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.contiguous() if hasattr(a, "contiguous") else a for a in args)


def contiguous_inputs(module: Any) -> None:
    """Make quanto's int4 linear layers take contiguous inputs: on CUDA its TinyGemm kernel
    (``torch._weight_int4pack_mm``) refuses the strided views SDXL's attention blocks pass
    (seen on an H100 with quanto 0.2.7 and torch 2.11)."""
    from optimum.quanto import qint4
    from optimum.quanto.nn import QLinear

    for layer in module.modules():
        wanted = isinstance(layer, QLinear) and layer.weight_qtype == qint4
        if wanted and not getattr(layer, "_deskgen_contiguous", False):
            layer.register_forward_pre_hook(_contiguous)
            layer._deskgen_contiguous = True


def group_sizes(module: Any) -> dict[str, int | None]:
    """Each of quanto's int4 layers' group size, by module name."""
    from optimum.quanto import qint4
    from optimum.quanto.nn import QModuleMixin

    return {
        name: layer.weight_group_size
        for name, layer in module.named_modules()
        if isinstance(layer, QModuleMixin) and layer.weight_qtype == qint4
    }


def _quant_state_tensors(state: Any) -> list[Any]:
    """The tensors of a bitsandbytes ``QuantState`` (4-bit weights' block scales, their
    lookup table, and with double quantization the scales' own scales)."""
    tensors = [getattr(state, name, None) for name in ("absmax", "code", "offset")]
    found = [t for t in tensors if t is not None and hasattr(t, "element_size")]
    nested = getattr(state, "state2", None)
    return found + (_quant_state_tensors(nested) if nested is not None else [])


def _tensor_bytes(tensor: Any, seen: set[int]) -> int:
    if id(tensor) in seen:
        return 0
    seen.add(id(tensor))
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None:  # quantized tensor subclasses: count what they hold
        names, _ = flatten()
        return sum(_tensor_bytes(getattr(tensor, name), seen) for name in names)
    # GGUF weights (diffusers' GGUFParameter) are their uint8 blocks: counted as they are;
    # bitsandbytes keeps its scales beside the packed data, off the parameter list
    extra = (
        list(_quant_state_tensors(tensor.quant_state))
        if getattr(tensor, "quant_state", None) is not None
        else []
    )
    scb = getattr(tensor, "SCB", None)  # LLM.int8()'s row scales
    if scb is not None and hasattr(scb, "element_size"):
        extra.append(scb)
    own = int(tensor.numel()) * int(tensor.element_size())
    return own + sum(_tensor_bytes(t, seen) for t in extra)


def module_bytes(module: Any) -> int:
    """Bytes held by ``module``'s parameters and buffers, counting quantized weights by the
    data and scales they store, not by their logical dtype: quanto's and torchao's tensor
    subclasses, GGUF blocks (diffusers' ``GGUFParameter``: the file's bytes), bitsandbytes'
    packed 4-bit data with its block scales (``quant_state``) and int8 data with its row
    scales (``SCB``). Shared tensors count once."""
    seen: set[int] = set()
    return sum(_tensor_bytes(t, seen) for t in [*module.parameters(), *module.buffers()])


def logical_elements(module: Any) -> int:
    """How many weights ``module`` holds as the model sees them (a GGUF or bitsandbytes
    weight counts its unpacked shape, not its bytes)."""
    import math

    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        shape = getattr(tensor, "quant_shape", None)  # GGUF
        state = getattr(tensor, "quant_state", None)  # bitsandbytes 4-bit
        if shape is None and state is not None:
            shape = getattr(state, "shape", None)
        total += math.prod(shape) if shape is not None else int(tensor.numel())
    return total
