"""`QuantConfig`: how a generator's components are quantized as they load; what it cost."""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .._memory_report import ComponentMemory, MemoryReport
from ._weights import WeightBits

__all__ = ["ComponentMemory", "MemoryReport", "QuantConfig", "Quantizable", "quantize"]


class Quantizable(Protocol):
    """What `quantize` needs of a generator (`deskgen.DeskGenerator` is one)."""

    @property
    def backend_name(self) -> str: ...

    @property
    def backend(self) -> Any: ...

    def memory_report(self) -> MemoryReport: ...


class QuantConfig(BaseModel):
    """Weight quantization of a generator's components, applied as each one loads (one
    full-precision component in memory at a time), e.g.
    ``DeskGenerator("sdxl", model=..., quantization=QuantConfig(method="quanto", weights="int8"))``.

    ``quanto`` (optimum-quanto, as the seed team asked) quantizes linear and convolution layers
    to int8, int4 or fp8 on any device; ``torchao`` (the path diffusers maintains) quantizes
    linear layers to int8 or fp8 (int4 needs its CUDA kernels), optionally with dynamic int8
    activations.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["quanto", "torchao"] = "torchao"
    weights: WeightBits = "int8"
    activations: Literal["int8"] | None = None
    """``int8``: torchao's dynamic int8 activations with int8 weights (faster matmuls on GPUs
    with int8 kernels); ``None``: activations stay in the model's dtype."""
    components: tuple[str, ...] | None = None
    """Pipeline components to quantize, e.g. ``("unet", "text_encoder_2", "controlnet")``;
    ``None``: the denoiser (``unet``), where the compute and most of the weights are."""
    exclude: tuple[str, ...] = ()
    """Module names or fnmatch patterns inside a component to keep in full precision, e.g.
    ``("*proj_out", "conv_out")`` (output projections that int4 damages most)."""
    group_size: int | None = Field(default=None, ge=32, le=1024)
    """int4 only: the most weights one scale (and shift) covers. Each layer takes the largest
    multiple of 32 up to it that divides its input width. ``None``: the library's (128). Larger
    groups cost less memory (a group stores 4 bytes of scale and shift: 128 weights a group is
    6.25% over half a byte a weight, 320 is 2.5%) and round more coarsely."""

    @model_validator(mode="after")
    def _group_only_for_int4(self) -> QuantConfig:
        if self.group_size is not None and self.weights != "int4":
            raise ValueError("group_size is for int4 weights only")
        return self


def quantize(generator: Quantizable, config: QuantConfig | None = None, /) -> MemoryReport:
    """Quantize the components of an already loaded generator in place (``config.components``,
    by default the UNet), waiting for running requests; returns the memory report.

    Quantizing at load (``DeskGenerator(..., quantization=config)``) keeps the memory peak
    lower: this is for a generator you already hold.

    Raises:
        UnsupportedOperationError: the backend can't be quantized this way.
        ConfigError: LoRAs are loaded, a component is missing or quantized already, or the
            method can't quantize that way here.
    """
    from .._exceptions import UnsupportedOperationError

    backend = generator.backend
    method = getattr(backend, "quantize", None)
    profile = getattr(backend, "profile", None)
    if method is None or not getattr(profile, "quantizable", ()):
        raise UnsupportedOperationError(
            f"The {generator.backend_name!r} backend can't be quantized with QuantConfig: "
            "`deskgen backends` lists the ones that can (quantization), or use the backend's "
            "own quantize_* options at load."
        )
    method(config or QuantConfig())
    return generator.memory_report()
