"""The denoiser of a diffusers pipeline read from a GGUF file (``QuantConfig(method="gguf",
file=...)``): the file found (a path or a hub file), checked against the model's own config
from its header (tensor names and shapes, before a weight loads), and loaded with the model
class's ``from_single_file`` and diffusers' GGUF quantizer. Its quantized weights stay in
their blocks (uint8) and are dequantized layer by layer as the model runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..._exceptions import (
    ConfigError,
    DeskgenError,
    ModelLoadError,
    ModelMismatchError,
    UnsupportedOperationError,
)
from ..._loading import component_class, map_load_errors
from ...quant._config import ComponentMemory, QuantConfig
from ...quant._gguf import GGUFFile, gguf_label, read_gguf, resolve_gguf

__all__ = ["load_gguf_denoiser"]


def _examples(names: list[str], count: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:count])
    return f"{shown}, ..." if len(names) > count else shown


def _config_folder(
    source: str,
    name: str,
    *,
    local: bool,
    revision: str | None,
    cache_dir: str | None,
    local_files_only: bool,
) -> Path:
    """The folder of the model's ``{name}/config.json`` (from the Hub's cache for a hub id:
    ``from_single_file`` reads a config folder without the cache options)."""
    if local:
        return Path(source) / name
    from huggingface_hub import hf_hub_download

    with map_load_errors(source, local=False, offline=local_files_only, remote_missing=True):
        path = hf_hub_download(
            source,
            "config.json",
            subfolder=name,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
    return Path(path).parent


def check_fits(header: GGUFFile, expected: dict[str, tuple[int, ...]], *, what: str) -> None:
    """Refuse a file in the diffusers layout whose tensors are not exactly the model's:
    missing ones, others, or other shapes (a file of another model or size). A file in the
    original layout (no name in common) is left to diffusers' converter."""
    found = {t.name: t.shape for t in header.tensors}
    if not set(found) & set(expected):
        return
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    reshaped = sorted(n for n in set(found) & set(expected) if found[n] != expected[n])
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} of the model's tensors are not in the file ({_examples(missing)})"
        )
    if unexpected:
        problems.append(
            f"{len(unexpected)} of the file's tensors are not in the model "
            f"({_examples(unexpected)})"
        )
    if reshaped:
        first = reshaped[0]
        problems.append(
            f"{len(reshaped)} have another shape (e.g. {first!r}: {found[first]} in the file, "
            f"{expected[first]} in the model)"
        )
    if problems:
        raise ModelMismatchError(_mismatch(header, what, "; ".join(problems)))


def _unconverted(header: GGUFFile, expected: dict[str, tuple[int, ...]], why: str) -> str:
    """Why a file with none of the model's tensor names did not load."""
    ours = next(iter(sorted(expected)), "?")
    theirs = header.tensors[0].name
    return (
        f"none of its tensor names is the model's (e.g. {theirs!r} in the file, {ours!r} in the "
        f"model) and diffusers' converter from the original layout could not map them ({why})"
    )


def _mismatch(header: GGUFFile, what: str, details: str) -> str:
    made = f" (its header says architecture {header.architecture!r})" if header.architecture else ""
    return (
        f"The GGUF file {str(header.path)!r}{made} does not fit {what}: {details}. A GGUF file "
        "holds one model's weights at one size: use a GGUF conversion of this very model's "
        "denoiser, or load the model it was made for."
    )


def load_gguf_denoiser(
    *,
    name: str,
    entry: Any,
    config: QuantConfig,
    model: str,
    source: str,
    local: bool,
    dtype: Any,
    revision: str | None,
    cache_dir: str | None,
    local_files_only: bool,
) -> tuple[Any, ComponentMemory]:
    """Load the pipeline's denoiser ``name`` (its model index ``entry``) from ``config.file``
    in ``dtype`` (diffusers' ``compute_dtype``), and what it holds.

    Raises:
        ModelNotFoundError: no such file, or the Hub can't give it.
        ModelLoadError: not a GGUF file, or a damaged one.
        ModelMismatchError: the file is of another model or size.
        ConfigError: a quantization type this diffusers can't read.
        UnsupportedOperationError: the model class reads no single files.
    """
    import torch
    from accelerate import init_empty_weights
    from diffusers import GGUFQuantizationConfig
    from diffusers.loaders.single_file_model import _get_single_file_loadable_mapping_class
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES

    from ...quant import module_bytes
    from ...quant._weights import logical_elements

    assert config.file is not None  # QuantConfig checks it
    path = resolve_gguf(config.file, cache_dir=cache_dir, local_files_only=local_files_only)
    header = read_gguf(path)
    cls: Any = component_class(entry, name=name)
    if _get_single_file_loadable_mapping_class(cls) is None:
        raise UnsupportedOperationError(
            f"diffusers' {cls.__name__} (this model's {name}) reads no single files, so no "
            "GGUF file: load the model without method='gguf' (quanto or torchao quantize it "
            "as it loads)."
        )
    readable = {t.name for t in SUPPORTED_GGUF_QUANT_TYPES} | {"F32", "F16"}
    unknown = sorted({t.type for t in header.tensors} - readable)
    if unknown:
        raise ConfigError(
            f"The GGUF file {config.file!r} holds {', '.join(unknown)} tensors, which this "
            f"diffusers cannot dequantize (it reads {', '.join(sorted(readable))}): upgrade "
            "diffusers, or choose a file of another quantization type."
        )
    folder = _config_folder(
        source,
        name,
        local=local,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
    )
    what = f"{model!r}'s {name} ({cls.__name__})"
    with map_load_errors(model, local=local, offline=local_files_only), init_empty_weights():
        empty = cls.from_config(cls.load_config(folder))
    expected = {k: tuple(v.shape) for k, v in empty.state_dict().items()}
    del empty
    check_fits(header, expected, what=what)
    same_layout = bool({t.name for t in header.tensors} & set(expected))
    try:
        module = cls.from_single_file(
            str(path),
            quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
            config=str(folder),
            local_files_only=True,
            dtype=dtype,
        )
    except DeskgenError:
        raise
    except (KeyError, ValueError, IndexError, TypeError, RuntimeError, AttributeError) as exc:
        # shapes the quantizer refuses, or an original-layout converter that found no key
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        details = why if same_layout else _unconverted(header, expected, why)
        raise ModelMismatchError(_mismatch(header, what, details)) from exc
    except Exception as exc:
        raise ModelLoadError(
            f"Could not load the GGUF file {config.file!r} ({type(exc).__name__}: {exc})."
        ) from exc
    empty_left = sorted(n for n, p in module.named_parameters() if p.is_meta)
    if empty_left:
        raise ModelMismatchError(
            _mismatch(
                header,
                what,
                _unconverted(
                    header,
                    expected,
                    f"{len(empty_left)} of the model's tensors are left empty: "
                    f"{_examples(empty_left)}",
                ),
            )
        )
    width = torch.empty((), dtype=dtype).element_size()
    memory = ComponentMemory(
        bytes=module_bytes(module),
        bytes_before=logical_elements(module) * width,
        quantization=f"{gguf_label(header.tensors)} (gguf)",
    )
    return module.eval(), memory
