"""Quantized loading of diffusers pipelines: components quantized one at a time as they load
(`deskgen.QuantConfig`), in place on a loaded pipeline, or read back saved quantized
(`deskgen.quant.save_quantized`)."""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

from ..._device import dtype_name
from ..._exceptions import ConfigError, UnsupportedOperationError
from ..._loading import component_class, is_module_entry
from ...quant._config import ComponentMemory, QuantConfig
from ._load import LoadingBackend

__all__ = ["QuantizingBackend", "bitsandbytes_config"]


def bitsandbytes_config(library: str, config: QuantConfig, dtype: Any) -> Any:
    """The ``BitsAndBytesConfig`` of the component's own library (``diffusers`` or
    ``transformers``) for ``config``: nf4/fp4 in blocks of 64 with double quantization (the
    scales quantized too: about 0.52 bytes a weight) computing in ``dtype``, or LLM.int8()."""
    if library == "diffusers":
        from diffusers import BitsAndBytesConfig
    else:
        from transformers import BitsAndBytesConfig
    if config.weights == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.weights,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_use_double_quant=True,
    )


class QuantizingBackend(LoadingBackend):
    """`LoadingBackend` with quantization (the profile's ``quantizable`` components)."""

    quantized_components: dict[str, ComponentMemory]
    """Components quantized: their bytes before and after."""
    quantization_configs: dict[str, QuantConfig]
    """How each quantized component was quantized (what `save_quantized` records)."""
    denoiser: ClassVar[str]

    def _gate_exclusive(self) -> Any:
        """Wait for running requests, and hold new ones back, while the weights change."""
        assert self._adapters is not None
        return self._adapters.exclusive()

    def _check_quantization_config(self, config: QuantConfig | None, *, loras: bool) -> None:
        """Refuse what can't work before any weight loads."""
        if config is None:
            return
        if not self.profile.quantizable:
            from ..._registry import backends_with, either

            raise UnsupportedOperationError(
                f"The {self.name!r} backend does not take quantization=QuantConfig(...): use "
                f"its own options, or one that does ({either(backends_with('quantization'))})."
            )
        if loras:
            raise ConfigError(
                "LoRAs can't be applied to quantized weights (their low-rank deltas need the "
                "full-precision layers): generate with the LoRAs unquantized, or drop "
                "quantization=...; fusing LoRAs before quantizing is planned."
            )
        if config.method in ("gguf", "bitsandbytes"):
            from ._single_file import is_single_file

            if is_single_file(self.opts.model):
                raise ConfigError(
                    f"QuantConfig(method={config.method!r}) loads components beside a diffusers "
                    f"pipeline folder or hub id, and {self.opts.model!r} is a single-file "
                    "checkpoint: convert it to a folder first (diffusers' from_single_file + "
                    "save_pretrained), or quantize it with method='quanto' or 'torchao'."
                )
        if config.method == "gguf":
            self._check_gguf_config(config)
            return
        if config.method == "bitsandbytes":
            from ..._device import resolve_device
            from ...quant._weights import check_bitsandbytes

            check_bitsandbytes(resolve_device(self.opts.device))
            return
        from ...quant._weights import check_supported, library_weights

        check_supported(
            library_weights(config.weights), config.method, activations=config.activations
        )

    def _check_gguf_config(self, config: QuantConfig) -> None:
        from ..._registry import backends_with, either
        from ...quant._gguf import resolve_gguf
        from ...quant._weights import check_gguf

        if not self.profile.gguf:
            raise UnsupportedOperationError(
                f"The {self.name!r} backend's {self.denoiser} can't be read from a GGUF file: "
                f"quantize it with QuantConfig(method='quanto' or 'torchao'), or use a backend "
                f"that takes GGUF files ({either(backends_with('gguf'))})."
            )
        if config.components not in (None, (self.denoiser,)):
            raise ConfigError(
                f"A GGUF file holds the denoiser, which is the {self.name!r} backend's "
                f"{self.denoiser!r}: leave components out, or name ({self.denoiser!r},)."
            )
        check_gguf()
        assert config.file is not None
        from ..._hub import is_local

        if is_local(config.file, subfolder=True):
            resolve_gguf(config.file)  # a missing local file: said before the model loads

    def _quantize_at_load(
        self, index: dict[str, Any], source: str, local: bool, extra: dict[str, Any]
    ) -> None:
        """Load each component to quantize on its own, quantize it, and add it to ``extra``
        (components already there, e.g. ControlNets, are quantized in place): the pipeline then
        loads the rest around them, so one full-precision component is in memory at a time."""

        import torch

        config = self.opts.quantization
        if config is None:
            return
        if config.method == "gguf":
            self._load_gguf(index, source, local, extra, config)
            return
        names = config.components
        if names is None:
            names = self.profile.default_quantized
        if config.method == "bitsandbytes":
            self._load_bitsandbytes(index, source, local, extra, config, names)
            return
        # the components loaded already (ControlNets, a vae=) first: less in memory at once
        for name in sorted(names, key=lambda n: n not in extra):
            entry = index.get(name)
            if name not in extra and not (isinstance(entry, list) and entry[0] is not None):
                present = sorted(
                    k for k, v in index.items() if isinstance(v, list) and v[0] is not None
                )
                raise ConfigError(
                    f"QuantConfig names the component {name!r}, which this {self.family} model "
                    f"lacks: choose from {', '.join(present)}."
                )
            module = extra.get(name)
            if module is None:
                cls: Any = component_class(entry, name=name)
                if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
                    weighted = sorted(k for k in index if is_module_entry(index[k]))
                    raise ConfigError(
                        f"QuantConfig names {name!r}, which has no weights to quantize: choose "
                        f"from {', '.join(weighted)}."
                    )
                loader: Any = cls  # a diffusers or transformers model class
                with self._translating_load_errors(self.opts.model, local=local):
                    module = loader.from_pretrained(source, subfolder=name, **self._load_kwargs())
            self._quantize_component(name, module, config)
            extra[name] = module

    def _component_entry(self, index: dict[str, Any], name: str) -> Any:
        entry = index.get(name)
        if not (isinstance(entry, list) and entry[0] is not None):
            present = sorted(
                k for k, v in index.items() if isinstance(v, list) and v[0] is not None
            )
            raise ConfigError(
                f"QuantConfig names the component {name!r}, which this {self.family} model "
                f"lacks: choose from {', '.join(present)}."
            )
        return entry

    def _load_gguf(
        self,
        index: dict[str, Any],
        source: str,
        local: bool,
        extra: dict[str, Any],
        config: QuantConfig,
    ) -> None:
        """The denoiser from the GGUF file (`._gguf`); the pipeline loads the rest around it."""
        from ._gguf import load_gguf_denoiser

        name = self.denoiser
        module, memory = load_gguf_denoiser(
            name=name,
            entry=self._component_entry(index, name),
            config=config,
            model=self.opts.model,
            source=source,
            local=local,
            dtype=self._torch_dtype,
            revision=self.opts.revision,
            cache_dir=self.opts.cache_dir,
            local_files_only=self.opts.local_files_only,
        )
        extra[name] = module
        self.quantized_components[name] = memory
        self.quantization_configs[name] = config

    def _load_bitsandbytes(
        self,
        index: dict[str, Any],
        source: str,
        local: bool,
        extra: dict[str, Any],
        config: QuantConfig,
        names: tuple[str, ...],
    ) -> None:
        """Each component loaded by its own library with its ``BitsAndBytesConfig``, quantized
        as its weights go onto the GPU. Components loaded apart already (HiDream's Llama, a
        ControlNet) can't be: named, they are refused; by default they are left out."""
        import torch

        from ...quant import module_bytes
        from ...quant._weights import logical_elements

        outside = sorted(set(names) - set(self.profile.quantizable))
        if outside:
            raise ConfigError(
                f"The {self.name!r} backend quantizes {', '.join(self.profile.quantizable)}, not "
                f"{', '.join(outside)}: choose components=(...) from those."
            )
        if config.components is None:  # the defaults: those loaded apart stay as they are
            names = tuple(n for n in names if n not in extra)
        given = sorted(set(names) & set(extra))
        if given:
            raise ConfigError(
                f"{', '.join(given)} is loaded from an option already, and bitsandbytes "
                "quantizes weights as they load from the model's files: leave it out of "
                "components, or quantize it with QuantConfig(method='quanto' or 'torchao')."
            )
        width = self._torch_dtype.itemsize
        for name in names:
            entry = self._component_entry(index, name)
            cls: Any = component_class(entry, name=name)
            if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
                weighted = sorted(k for k in index if is_module_entry(index[k]))
                raise ConfigError(
                    f"QuantConfig names {name!r}, which has no weights to quantize: choose "
                    f"from {', '.join(weighted)}."
                )
            loader: Any = cls  # a diffusers or transformers model class
            with self._translating_load_errors(self.opts.model, local=local):
                module = loader.from_pretrained(
                    source,
                    subfolder=name,
                    quantization_config=bitsandbytes_config(entry[0], config, self._torch_dtype),
                    device_map={"": self._device},
                    **self._load_kwargs(),
                )
            self.quantized_components[name] = ComponentMemory(
                bytes=module_bytes(module),
                bytes_before=logical_elements(module) * width,
                quantization=config.label,
            )
            self.quantization_configs[name] = config
            extra[name] = module

    def _quantize_component(self, name: str, module: Any, config: QuantConfig) -> None:
        """Quantize one component in place (each of a list, e.g. several ControlNets) and
        record its bytes before and after."""
        from ...quant import module_bytes, quantize_weights
        from ...quant._weights import library_weights

        parts = list(module) if isinstance(module, (list, tuple)) else [module]
        before = sum(module_bytes(part) for part in parts)
        for part in parts:
            used = quantize_weights(
                part,
                weights=library_weights(config.weights),
                backend="quanto" if config.method == "quanto" else "torchao",
                activations=config.activations,
                exclude=config.exclude,
                group_size=config.group_size,
            )
        activations = " + int8 activations" if config.activations else ""
        self.quantized_components[name] = ComponentMemory(
            bytes=sum(module_bytes(part) for part in parts),
            bytes_before=before,
            quantization=f"{config.weights}{activations} ({used})",
        )
        self.quantization_configs[name] = config

    def quantize(self, config: QuantConfig) -> None:
        """Quantize components of the loaded pipeline in place (`deskgen.quant.quantize`)."""
        self._check_open()
        if config.method in ("gguf", "bitsandbytes"):
            raise ConfigError(
                f"method={config.method!r} can't quantize a loaded pipeline in place (a GGUF "
                "file is quantized already; bitsandbytes quantizes as weights load onto the "
                "GPU): create the generator with quantization=QuantConfig(method="
                f"{config.method!r}, ...), or quantize in place with method='quanto' or "
                "'torchao'."
            )
        self._check_quantization_config(config, loras=False)
        if self.offload == "sequential":
            raise ConfigError(
                "With sequential offload the weights live off the device behind accelerate's "
                "hooks: quantize at load instead (DeskGenerator(..., quantization=...))."
            )
        adapters = self._adapters
        if adapters is not None and adapters.loaded:
            raise ConfigError(
                "LoRAs are loaded, and they can't be applied to quantized weights: unload them "
                "first (gen.unload_lora(name)), or quantize a generator without LoRAs."
            )
        pipe = self._txt2img
        names = config.components
        if names is None:
            names = self.profile.default_quantized
        wrong = [n for n in names if getattr(pipe, n, None) is None]
        wrong += sorted(set(names) & set(self.quantized_components))
        if wrong:
            present = sorted(k for k, v in pipe.components.items() if hasattr(v, "parameters"))
            raise ConfigError(
                f"Can't quantize {', '.join(wrong)}: not a component of this model, or "
                f"quantized already (components: {', '.join(present)})."
            )
        lock = self._gate_exclusive() if adapters is not None else contextlib.nullcontext()
        with lock:
            for name in names:
                self._quantize_component(name, getattr(pipe, name), config)
            if adapters is not None:
                adapters.mark_quantized(sorted(self.quantized_components))

    def _load_saved_quantized(
        self, index: dict[str, Any], source: str, extra: dict[str, Any]
    ) -> None:
        """The components a folder holds quantized (`deskgen.quant.save_quantized`)."""
        from ...quant import module_bytes
        from ...quant._saved import (
            SavedQuantization,
            load_quantized_component,
            quantized_folders,
        )

        saved = quantized_folders(source, index)
        if not saved:
            return
        if self.opts.quantization is not None:
            raise ConfigError(
                f"{self.opts.model!r} is already quantized ({', '.join(sorted(saved))}): load "
                "it without quantization=..., or quantize the original model."
            )
        for name, record in saved.items():
            if name in extra:  # given as an option (a ControlNet): that one is used
                continue
            module = load_quantized_component(
                source, name, index[name], record, dtype=dtype_name(self._torch_dtype)
            )
            config = SavedQuantization.model_validate(record).config()
            activations = " + int8 activations" if config.activations else ""
            self.quantized_components[name] = ComponentMemory(
                bytes=module_bytes(module),
                quantization=f"{config.weights}{activations} ({config.method})",
            )
            self.quantization_configs[name] = config
            extra[name] = module
