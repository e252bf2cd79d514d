"""Weight-only quantization of a torch module, and what its weights really occupy."""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from .._exceptions import ConfigError, MissingDependencyError

__all__ = ["QuantBackend", "WeightBits", "check_supported", "module_bytes", "quantize_weights"]

WeightBits = Literal["int8", "int4"]
QuantBackend = Literal["auto", "quanto", "torchao"]


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


def check_supported(weights: WeightBits, backend: QuantBackend) -> str:
    """The library that will quantize to ``weights``, or the error it would end in, before any
    weight loads. deskgen quantizes weights in system memory, before moving them to the GPU:
    torchao's int4 layouts need the mslk kernels and CUDA tensors, so int4 goes to quanto.

    Raises:
        MissingDependencyError: no library installed (names the extra).
        ConfigError: torchao asked for int4.
    """
    used = resolve_backend(backend)
    if used == "torchao" and weights == "int4":
        raise ConfigError(
            "torchao's int4 weights need its CUDA kernels (the mslk package) on GPU tensors, "
            "and deskgen quantizes in system memory before the move: use "
            "quantization_backend='quanto' for int4 (pip install 'deskgen[quanto]'), or int8."
        )
    return used


def quantize_weights(module: Any, *, weights: WeightBits, backend: QuantBackend = "auto") -> str:
    """Quantize the weights of ``module``'s linear layers in place (activations stay in the
    module's dtype) and return the library used.

    optimum-quanto: ``quantize`` + ``freeze`` with ``qint8``/``qint4``, on any device. torchao:
    ``Int8WeightOnlyConfig`` / ``Int4WeightOnlyConfig`` (int4 needs a CUDA GPU and its kernels).

    Raises:
        MissingDependencyError: the library is not installed (names the extra).
        ConfigError: the library can't quantize that way here (torchao int4 without a GPU).
    """
    used = resolve_backend(backend)
    if used == "quanto":
        from optimum.quanto import freeze, qint4, qint8, quantize

        quantize(module, weights=qint8 if weights == "int8" else qint4)
        freeze(module)
        return used
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    config = Int8WeightOnlyConfig() if weights == "int8" else Int4WeightOnlyConfig(group_size=128)
    try:
        quantize_(module, config)
    except (ImportError, NotImplementedError, RuntimeError) as exc:
        raise ConfigError(
            f"torchao could not quantize to {weights} here ({type(exc).__name__}: {exc}). "
            "torchao's int4 weights need its CUDA kernels (the mslk package) on GPU tensors: "
            "use weights='int8', or quantization_backend='quanto' (int4 on any device)."
        ) from exc
    return used


def _tensor_bytes(tensor: Any) -> int:
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None:  # quantized tensor subclasses: count what they hold
        names, _ = flatten()
        return sum(_tensor_bytes(getattr(tensor, name)) for name in names)
    return int(tensor.numel()) * int(tensor.element_size())


def module_bytes(module: Any) -> int:
    """Bytes held by ``module``'s parameters and buffers, counting quantized weights (quanto's
    and torchao's tensor subclasses) by the data and scales they store, not by their logical
    dtype. Shared tensors count once."""
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        key = id(tensor)
        if key not in seen:
            seen.add(key)
            total += _tensor_bytes(tensor)
    return total
