"""Quantized pipelines saved and loaded again, so a service restarts without re-quantizing.

`save_quantized` writes a diffusers pipeline folder (``model_index.json``, every component in
its own folder as ``save_pretrained`` writes it) in which each quantized component's folder
holds its ``config.json``, ``deskgen_quantized.safetensors`` (the quantized weights: quanto's
data and scales, torchao's tensors flattened by torchao's own safetensors support) and
``deskgen_quantization.json`` (method, weight type, dtype, quanto's quantization map).
`DeskGenerator` loads such a folder like any other: those components are rebuilt empty from
their config and given the saved weights (quanto's ``requantize``, torchao's unflatten), so the
outputs are the same as before saving, bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from .._exceptions import ConfigError, ModelLoadError
from .._record import atomic_write_bytes
from ._config import QuantConfig
from ._weights import WeightBits


class SavableGenerator(Protocol):
    """What `save_quantized` needs of a generator (`deskgen.DeskGenerator` is one)."""

    @property
    def backend_name(self) -> str: ...

    @property
    def backend(self) -> Any: ...

    @property
    def loras(self) -> Any: ...

    @property
    def dtype(self) -> str: ...


__all__ = [
    "QUANTIZED_RECORD",
    "SavedQuantization",
    "load_quantized_component",
    "quantized_folders",
    "save_quantized",
]


class SavedQuantization(BaseModel):
    """What ``deskgen_quantization.json`` records of a saved quantized component."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1]
    method: Literal["quanto", "torchao"]
    weights: WeightBits
    activations: Literal["int8"] | None = None
    exclude: list[str] = []
    dtype: Literal["float32", "float16", "bfloat16"]
    quantization_map: dict[str, dict[str, str]] | None = None
    group_size: int | None = None
    group_sizes: dict[str, int | None] | None = None
    """quanto's int4 layers' groups, by module name."""
    aliases: dict[str, str] = {}
    """Names of tied weights stored once: alias -> stored name."""

    def config(self) -> QuantConfig:
        return QuantConfig(
            method=self.method,
            weights=self.weights,
            activations=self.activations,
            exclude=tuple(self.exclude),
            group_size=self.group_size,
        )


QUANTIZED_WEIGHTS = "deskgen_quantized.safetensors"
QUANTIZED_RECORD = "deskgen_quantization.json"
_FORMAT = 1


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def save_quantized(generator: SavableGenerator, out: str | os.PathLike[str]) -> Path:
    """Write ``generator``'s pipeline, quantized components included, to the folder ``out``
    (created; it must not hold another model). Load it back with ``DeskGenerator(backend,
    model=out)``.

    Raises:
        ConfigError: the generator has no quantized component, or LoRAs are loaded, or ``out``
            is not empty, or its components come from a GGUF file or bitsandbytes.
        UnsupportedOperationError: the backend has no diffusers pipeline.
    """

    backend = generator.backend
    quantized = getattr(backend, "quantized_components", {})
    if not quantized:
        raise ConfigError(
            "This generator has no quantized component: create it with "
            "quantization=QuantConfig(...) first."
        )
    if generator.loras:
        raise ConfigError("Unload the LoRAs first: a saved quantized model holds no adapters.")
    unsaved = sorted(
        {c.method for c in getattr(backend, "quantization_configs", {}).values()}
        & {"gguf", "bitsandbytes"}
    )
    if unsaved:
        raise ConfigError(
            f"save_quantized saves quanto/torchao weights, not {' or '.join(unsaved)}: a GGUF "
            "denoiser is its file already (load it again with QuantConfig(method='gguf', "
            "file=...)), and bitsandbytes quantizes again in seconds as it loads "
            "(QuantConfig(method='bitsandbytes')). To save a model quantized, quantize it "
            "with QuantConfig(method='quanto') or 'torchao'."
        )
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(
            f"{str(target)!r} is not an empty folder: save a quantized model to a new folder."
        )
    if not getattr(getattr(backend, "profile", None), "saves_quantized", False):
        raise ConfigError(
            f"save_quantized does not save {generator.backend_name!r} pipelines (`deskgen "
            "backends` lists those it saves); save the quantized base model with its own "
            "backend and quantize the rest as it loads (QuantConfig(components=(...)))."
        )
    configs = backend.quantization_configs
    pipe = backend.pipeline
    # written beside the target, renamed into place when whole: no half-saved model folder
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _save_into(staging, pipe, quantized, configs, dtype=generator.dtype)
        if target.exists():
            target.rmdir()  # empty, checked above
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _save_into(
    target: Path, pipe: Any, quantized: dict[str, Any], configs: dict[str, Any], *, dtype: str
) -> None:
    import torch
    from safetensors.torch import save_file

    pipe.save_config(target)  # model_index.json
    for name, module in pipe.components.items():
        if module is None:
            continue
        folder = target / name
        if name not in quantized:
            module.save_pretrained(folder)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        if hasattr(module, "save_config"):  # diffusers models
            module.save_config(folder)
        else:  # transformers models
            module.config.save_pretrained(folder)
        state = module.state_dict()
        config = configs[name]
        record: dict[str, Any] = {
            "format": _FORMAT,
            "method": config.method,
            "weights": config.weights,
            "activations": config.activations,
            "exclude": list(config.exclude),
            "dtype": dtype,
            "group_size": config.group_size,
        }
        metadata: dict[str, str] = {}
        if config.method == "quanto":
            from optimum.quanto import quantization_map

            from ._weights import group_sizes

            record["quantization_map"] = quantization_map(module)
            record["group_sizes"] = group_sizes(module)
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        else:
            from torchao.prototype.safetensors.safetensors_support import (
                flatten_tensor_state_dict,
            )

            cpu = {k: v.detach().to("cpu") for k, v in state.items()}
            tensors, metadata = flatten_tensor_state_dict(cpu)
            tensors = {k: v.contiguous() for k, v in tensors.items()}
        # tied weights (T5's shared embedding) are stored once, their other names as aliases
        seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
        aliases: dict[str, str] = {}
        for key, tensor in list(tensors.items()):
            identity = (
                tensor.untyped_storage().data_ptr(),
                tensor.storage_offset(),
                tuple(tensor.shape),
            )
            if identity in seen:
                aliases[key] = seen[identity]
                del tensors[key]
            else:
                seen[identity] = key
        record["aliases"] = aliases
        with torch.no_grad():
            save_file(tensors, str(folder / QUANTIZED_WEIGHTS), metadata=metadata)
        _write_json(folder / QUANTIZED_RECORD, record)


def quantized_folders(source: str, index: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The components of the local pipeline folder ``source`` saved quantized by deskgen, with
    their records."""
    found: dict[str, dict[str, Any]] = {}
    for name, entry in index.items():
        if not (isinstance(entry, list) and name.isidentifier()):  # components only
            continue
        path = Path(source) / name / QUANTIZED_RECORD
        if path.is_file():
            try:
                record = SavedQuantization.model_validate_json(path.read_text(encoding="utf-8"))
            except (ValidationError, UnicodeDecodeError) as exc:
                raise ModelLoadError(
                    f"{str(path)!r} is damaged or from another version ({exc}): save the "
                    "quantized model again."
                ) from exc
            found[name] = record.model_dump()
    return found


def load_quantized_component(
    source: str, name: str, entry: list[str], record: dict[str, Any], *, dtype: str
) -> Any:
    """Rebuild the quantized component ``name`` of the pipeline folder ``source`` (``entry``:
    its ``[library, class]`` in the model index) with its saved weights, on the CPU."""
    import torch
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from safetensors.torch import load_file

    if record.get("format") != _FORMAT:
        raise ModelLoadError(
            f"{name!r} was saved quantized by another deskgen version (format "
            f"{record.get('format')}): quantize the original model again."
        )
    if record.get("dtype") != dtype:
        raise ConfigError(
            f"{name!r} was saved quantized in {record.get('dtype')}; load this model with "
            f"dtype={record.get('dtype')!r} (it is {dtype!r} now)."
        )
    folder = Path(source) / name
    from .._loading import component_class

    cls = component_class(entry, name=name)
    with init_empty_weights():
        if hasattr(cls, "from_config") and hasattr(cls, "load_config"):  # diffusers
            module = cls.from_config(cls.load_config(folder))
        else:  # transformers
            from transformers import AutoConfig

            module = cls._from_config(AutoConfig.from_pretrained(folder))
    module.to(
        dtype=getattr(torch, dtype)
    )  # still empty: the saved dtype for what stays unquantized
    weights = folder / QUANTIZED_WEIGHTS
    # cloned: safetensors' buffers can be unaligned, which int8 CPU kernels crash on
    state = {key: value.clone() for key, value in load_file(str(weights)).items()}
    for alias, stored in (record.get("aliases") or {}).items():
        if stored in state:
            state[alias] = state[stored]
    if record["method"] == "quanto":
        from optimum.quanto import requantize

        # the layers first (empty), then their groups as saved, then the weights
        from ._weights import contiguous_inputs

        requantize(module, {}, record["quantization_map"], device=torch.device("cpu"))
        for layer_name, size in (record.get("group_sizes") or {}).items():
            module.get_submodule(layer_name).weight_group_size = size
        module.load_state_dict(state, strict=False)
        contiguous_inputs(module)
        expected = set(module.state_dict())
        missing = sorted(expected - set(state))
    else:
        from torchao.prototype.safetensors.safetensors_support import (
            unflatten_tensor_state_dict,
        )

        with safe_open(str(weights), framework="pt") as fh:
            metadata = fh.metadata() or {}
        state, _left = unflatten_tensor_state_dict(state, metadata)
        result = module.load_state_dict(state, assign=True, strict=False)
        missing = sorted(result.missing_keys)
    if missing:
        raise ModelLoadError(
            f"The saved quantized {name!r} lacks weights ({', '.join(missing[:3])}...): the "
            "folder is incomplete; save it again."
        )
    return module.eval()
