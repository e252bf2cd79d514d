"""`QuantConfig`: how a generator's components are quantized as they load; what it cost."""

from __future__ import annotations

import os
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .._memory_report import ComponentMemory, MemoryReport
from ._weights import QuantMethod, QuantWeights

__all__ = [
    "ComponentMemory",
    "MemoryReport",
    "QuantConfig",
    "Quantizable",
    "methods_taken",
    "quantize",
]

_DEFAULT_WEIGHTS: dict[str, str | None] = {"gguf": None, "bitsandbytes": "nf4"}
"""``weights`` when a config leaves it out, by method (else ``int8``)."""


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
    activations. ``bitsandbytes`` quantizes linear layers to nf4/fp4 (blocks of 64 weights) or
    int8 as they load onto a CUDA GPU (diffusers' and transformers' own configs). ``gguf``
    reads the denoiser (``unet`` or ``transformer``) from a GGUF file quantized already
    (``file=``, e.g. a city96 Q4_K_S file), the rest of the pipeline from the model.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: QuantMethod = "torchao"
    weights: QuantWeights | None = None
    """quanto/torchao: ``int8`` (the default), ``int4``, ``fp8``; bitsandbytes: ``nf4`` (the
    default), ``fp4``, ``int8``; gguf: ``None`` (the file's own types are the weights)."""
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

    file: str | None = Field(default=None, strict=True)
    """gguf only: the denoiser's ``.gguf`` file, a local path (``~`` expanded) or a file on the
    Hugging Face Hub as ``owner/repo/name.gguf`` (downloaded to the cache, or read from it
    offline), e.g. ``"QuantStack/Qwen-Image-Edit-GGUF/Qwen_Image_Edit-Q4_K_S.gguf"``."""

    @model_validator(mode="before")
    @classmethod
    def _default_weights(cls, data: Any) -> Any:
        if isinstance(data, dict) and "weights" not in data:
            method = data.get("method", "torchao")
            data = {**data, "weights": _DEFAULT_WEIGHTS.get(method, "int8")}
        return data

    @model_validator(mode="after")
    def _check_method(self) -> QuantConfig:
        if self.group_size is not None and self.weights != "int4":
            raise ValueError("group_size is for int4 weights only")
        if self.method == "gguf":
            self._check_gguf()
        elif self.file is not None:
            raise ValueError(
                f"file= is for method='gguf' (a GGUF file of the denoiser), not "
                f"{self.method!r}: QuantConfig(method='gguf', file={self.file!r})"
            )
        if self.method == "bitsandbytes":
            if self.weights not in ("nf4", "fp4", "int8"):
                raise ValueError(
                    f"bitsandbytes quantizes to 'nf4' (the default), 'fp4' or 'int8', not "
                    f"{self.weights!r}"
                )
            if self.activations is not None or self.exclude:
                raise ValueError(
                    "activations= and exclude= are for quanto/torchao: bitsandbytes keeps "
                    "activations in the model's dtype and skips the layers diffusers and "
                    "transformers keep in full precision themselves"
                )
        elif self.method in ("quanto", "torchao") and self.weights not in ("int8", "int4", "fp8"):
            hint = (
                ": nf4/fp4 are bitsandbytes' 4-bit types (QuantConfig(method='bitsandbytes', "
                f"weights={self.weights!r})), int4 is quanto's"
                if self.weights in ("nf4", "fp4")
                else ""
            )
            raise ValueError(
                f"{self.method} quantizes to 'int8', 'int4' or 'fp8', not {self.weights!r}{hint}"
            )
        return self

    def _check_gguf(self) -> None:
        if self.file is None or not self.file.strip():
            raise ValueError(
                "method='gguf' needs file=: the denoiser's .gguf file, a local path or a hub "
                "file 'owner/repo/name.gguf' (e.g. "
                "'QuantStack/Qwen-Image-Edit-GGUF/Qwen_Image_Edit-Q4_K_S.gguf')"
            )
        if not self.file.lower().endswith(".gguf"):
            raise ValueError(
                f"file={self.file!r} is not a .gguf file: give the path or hub file "
                "('owner/repo/name.gguf') of a GGUF file"
            )
        given = [
            name
            for name, value in (
                ("weights", self.weights),
                ("activations", self.activations),
                ("group_size", self.group_size),
                ("exclude", self.exclude or None),
            )
            if value is not None
        ]
        if given:
            raise ValueError(
                f"method='gguf' takes no {', '.join(given)}: the GGUF file's own types (Q8_0, "
                "Q4_K_S...) are the weights; choose another file for another size"
            )
        if self.components is not None and (
            len(self.components) != 1 or self.components[0] not in ("unet", "transformer")
        ):
            raise ValueError(
                "a GGUF file holds the denoiser only: leave components out (or name the "
                "'transformer' / 'unet'); the rest of the pipeline loads from the model"
            )

    @property
    def label(self) -> str:
        """How the memory report words it, e.g. ``"int8 (quanto)"``, ``"nf4 (bitsandbytes)"``."""
        activations = " + int8 activations" if self.activations else ""
        return f"{self.weights or 'GGUF'}{activations} ({self.method})"

    @property
    def gguf_path(self) -> str | None:
        """``file`` with ``~`` expanded (a hub file stays as given)."""
        return os.path.expanduser(self.file) if self.file is not None else None


def methods_taken(profile: Any) -> tuple[str, ...]:
    """The `QuantConfig` methods a backend's profile (`deskgen.backends.BackendProfile`) takes:
    quanto, torchao and bitsandbytes where it has quantizable components, gguf where its
    denoiser reads GGUF files."""
    methods: list[str] = []
    if getattr(profile, "quantizable", ()):
        methods += ["torchao", "quanto", "bitsandbytes"]
    if getattr(profile, "gguf", False):
        methods.append("gguf")
    return tuple(methods)


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
    from .._exceptions import ConfigError, UnsupportedOperationError

    if config is not None and config.method == "gguf":
        raise ConfigError(
            "A GGUF file is a model quantized already: it can't quantize a loaded generator in "
            "place. Load the denoiser from it instead: DeskGenerator(..., "
            "quantization=QuantConfig(method='gguf', file=...))."
        )
    if config is not None and config.method == "bitsandbytes":
        raise ConfigError(
            "bitsandbytes quantizes weights as they load onto the GPU, not in place: create "
            "the generator with DeskGenerator(..., quantization=QuantConfig("
            f"method='bitsandbytes', weights={config.weights!r})), or quantize this one with "
            "QuantConfig(method='quanto') or 'torchao'."
        )
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
