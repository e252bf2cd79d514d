"""The memory planner: from the memory at hand and the model's component sizes, how to load it.

`plan_memory` reads the size of every component without loading a weight (the safetensors
headers of a local folder or of the Hugging Face cache; else the published parameter counts of
the backend's default model), takes the memory at hand (free GPU memory, or available RAM on the
CPU, or a given budget), and chooses the dtype, quantization, CPU offload and VAE tiling/slicing
for a mode:

- ``max-speed``: nothing that slows steps (no quantization, no offload);
- ``balanced``: the first of these that fits: as is; the denoiser in int8; every large
  component in int8; model offload; model offload with the denoiser in int8; sequential offload;
- ``low``: the least memory: every large component in int8, sequential offload on a GPU, VAE
  tiling and slicing;
- ``auto``: ``balanced``.

"Fits" means the weights that must sit on the device at once (all of them, or with model
offload the largest component) plus the backend's working memory (activations and the VAE
decode of one 1024 px image, a published-figure estimate) within the memory at hand.
``DeskGenerator(..., memory="auto")`` applies the plan; ``deskgen plan`` prints it.

Without a backend, the model's own index says which one (``model_index.json``'s
``_class_name``, from a folder or the Hugging Face cache, matched against the pipeline classes
each backend declares), or, for a hub id not cached, the published models the planner knows
(`published_models`: each backend's default model and ``profile.memory.published_models``).
With a budget, the plan may be for a device that is not on this machine (``device="cuda"`` on a
laptop: a plan for a card you may not own).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ._planner_sizes import (
    Offload,
    Plan,
    check_method,
    denoiser_of,
    four_bit_notes,
    ladder,
    quantized_bytes,
    single_file_sizes,
)
from ._planner_sizes import cached_folder as _cached_folder
from ._planner_sizes import folder_parameters as _folder_parameters
from ._planner_sizes import safetensors_elements as _safetensors_elements
from ._planner_sizes import saved_quantized_bytes as _saved_quantized_bytes
from ._planner_sizes import single_file_backends as _single_file_backends
from .backends._profile import GiB, MemoryProfile
from .quant._config import QuantConfig, methods_taken

__all__ = [
    "MemoryMode",
    "MemoryPlan",
    "infer_backend",
    "known_parameters",
    "plan_memory",
    "published_models",
]

MemoryMode = Literal["auto", "low", "balanced", "max-speed"]


DEFAULT_WORK_BYTES = 4 * GiB
"""Working memory assumed for a backend whose profile gives none."""
TILED_SAVING = 0.4
"""Share of the working memory VAE tiling and slicing save (the decode's peak)."""
LINEAR_SHARE = 0.87
"""Share of a component's weights in linear layers (SDXL's UNet: 87%): what int8 halves."""
LARGE = 500_000_000
"""Components with more parameters than this are "large": quantized in the thrifty plans."""
DENOISERS = ("unet", "transformer")


class MemoryPlan(BaseModel):
    """How to load a model in the memory at hand (`plan_memory`)."""

    model_config = ConfigDict(frozen=True)

    backend: str
    model: str
    mode: MemoryMode
    device: str
    dtype: str
    budget_bytes: int
    """The memory the plan fits in: free GPU memory, available RAM, or the given budget."""
    budget_source: Literal["gpu", "ram", "given"]
    sizes_from: Literal["files", "published"]
    """``files``: the model's own safetensors headers; ``published``: known parameter counts."""
    component_bytes: dict[str, int]
    """Each component's weights as planned (quantized ones at their quantized size)."""
    quantization: QuantConfig | None = None
    offload: Offload = "none"
    vae_tiling: bool = False
    vae_slicing: bool = False
    device_bytes: int
    """What must sit on the device at once: weights (all, or the largest with offload) plus
    the working memory estimate."""
    fits: bool
    notes: list[str] = Field(default_factory=list)
    methods: list[str] = Field(default_factory=list)
    """The `QuantConfig` methods the backend takes (from its profile)."""

    def options(self) -> dict[str, Any]:
        """The `DeskGenerator` options that apply the plan."""
        options: dict[str, Any] = {
            "dtype": self.dtype,
            "offload": self.offload,
            "vae_tiling": self.vae_tiling,
            "vae_slicing": self.vae_slicing,
        }
        if self.quantization is not None:
            options["quantization"] = self.quantization
        return options

    def summary(self) -> str:
        lines = [
            f"{self.backend} ({self.model}) on {self.device}, {self.mode}: "
            f"{'fits' if self.fits else 'does NOT fit'} "
            f"({self.device_bytes / GiB:.1f} of {self.budget_bytes / GiB:.1f} GiB, "
            f"{self.budget_source})",
            f"  dtype {self.dtype}, offload {self.offload}, "
            f"vae tiling {'on' if self.vae_tiling else 'off'}, "
            f"slicing {'on' if self.vae_slicing else 'off'}",
        ]
        if self.quantization is not None:
            q = self.quantization
            lines.append(
                f"  quantization: {q.weights or Path(q.file or '?').name} ({q.method}) of "
                f"{', '.join(q.components or ())}"
            )
        for name, size in sorted(self.component_bytes.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {name}: {size / GiB:.2f} GiB")
        if self.methods:
            lines.append(f"  quantization methods it takes: {', '.join(self.methods)}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _check_folder(model: str) -> None:
    """Refuse a path that names no folder, rather than plan it with published sizes."""
    from ._exceptions import ConfigError, ModelNotFoundError
    from ._hub import is_local

    if not model.strip():  # "" would read ./model_index.json: the current folder
        raise ConfigError("The model name is empty: give a hub id or a pipeline folder.")
    if model.lower().endswith(".safetensors"):  # a single-file checkpoint (`_planner_sizes`)
        if is_local(model, subfolder=True) and not Path(os.path.expanduser(model)).is_file():
            raise ModelNotFoundError(
                f"No checkpoint file at {model!r}: give a .safetensors file, a pipeline folder "
                "or a hub id."
            )
        return
    if is_local(model) and not Path(os.path.expanduser(model)).is_dir():
        raise ModelNotFoundError(
            f"No model folder at {model!r}: give a pipeline folder (with model_index.json) or a "
            "hub id."
        )


def _index_class(model: str) -> str | None:
    """``_class_name`` of the model's ``model_index.json`` (a folder, or a hub repo in the
    local cache), or ``None`` when there is none to read."""
    folder = Path(os.path.expanduser(model))
    if not (folder / "model_index.json").is_file():
        folder = _cached_folder(model) or folder
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = index.get("_class_name") if isinstance(index, dict) else None
    return name if isinstance(name, str) else None


def _memory_profile(backend: str) -> MemoryProfile | None:
    from ._registry import get_backend_class

    return get_backend_class(backend, check_installed=False).profile.memory


def known_parameters(backend: str) -> dict[str, int]:
    """The published parameter counts of ``backend``'s default model, by component (its
    ``profile.memory``; empty when it declares none)."""
    memory = _memory_profile(backend)
    return dict(memory.parameters) if memory is not None else {}


def published_models() -> dict[str, str]:
    """Hub ids the planner sizes without their files, with their backend: each backend's
    default model and ``profile.memory.published_models``."""
    from ._registry import get_backend_class, list_backends

    known: dict[str, str] = {}
    for info in list_backends():
        cls = get_backend_class(info.name, check_installed=False)
        memory = cls.profile.memory
        if memory is None:
            continue
        for name in (cls.default_model, *memory.published_models):
            if name is not None:
                known.setdefault(name, info.name)
    return known


def _published_backend(model: str) -> str | None:
    """The backend of a hub id the planner knows (`published_models`)."""
    known = {k.casefold(): v for k, v in published_models().items()}
    return known.get(model.strip("/").casefold())


def _plannable() -> list[str]:
    from ._registry import list_backends

    return [info.name for info in list_backends() if info.pipelines]


def infer_backend(model: str) -> str:
    """The backend a model is for: from its ``model_index.json`` (a folder or the Hugging Face
    cache), matched against each backend's declared pipeline classes
    (`deskgen._registry.pipeline_classes`), else from the published models the planner knows.

    Raises:
        ConfigError: no index to read and not a known model, an index no backend loads, or
            one that several backends claim; the message lists the backends to choose from.
    """
    from ._exceptions import ConfigError
    from ._registry import backends_for_pipeline

    choices = ", ".join(_plannable())
    single = _single_file_backends(model)
    if single is not None:
        pipeline, names = single
        if len(names) == 1:
            return names[0]
        raise ConfigError(
            f"{model!r} is a single-file {pipeline} checkpoint, which "
            + (f"the backends {', '.join(names)} all load" if names else "no backend loads")
            + f": pass the backend (--backend NAME), one of {choices}."
        )
    class_name = _index_class(model)
    if class_name is not None:
        names = backends_for_pipeline(class_name)
        if len(names) == 1:
            return names[0]
        if names:
            raise ConfigError(
                f"{model!r} is a {class_name}, which the backends {', '.join(names)} all load: "
                "pass the backend (--backend NAME)."
            )
        raise ConfigError(
            f"{model!r} is a {class_name}, which no registered backend loads: pass one of "
            f"{choices} (--backend NAME) if it is such a model."
        )
    published = _published_backend(model)
    if published is not None:
        return published
    raise ConfigError(
        f"Can't tell which backend {model!r} is for: no model_index.json in a folder or the "
        "local Hugging Face cache, and not one of the models deskgen knows "
        f"({', '.join(published_models())}). Pass the backend (--backend NAME): one of {choices}."
    )


def _check_backend(backend: str, model: str) -> None:
    """Refuse a model whose index (or published name) says it is another backend's."""
    from ._exceptions import ConfigError
    from ._registry import backends_for_pipeline, get_backend_class, pipeline_classes

    accepted = set(
        pipeline_classes(get_backend_class(backend, check_installed=False), accepted=True)
    )
    if not accepted:
        return
    single = _single_file_backends(model)
    if single is not None:
        if backend not in single[1]:
            from ._registry import backends_with, either

            raise ConfigError(
                f"{model!r} is a single-file {single[0]} checkpoint, which the {backend!r} "
                f"backend doesn't load from one file: plan it with "
                f"{either(single[1] or backends_with('single_file'))}."
            )
        return
    class_name = _index_class(model)
    if class_name is not None:
        owners = backends_for_pipeline(class_name)
    else:
        owners = [name] if (name := _published_backend(model)) else []
        class_name = (
            next(iter(pipeline_classes(get_backend_class(owners[0], check_installed=False))), None)
            if owners
            else None
        )
    if class_name is None or class_name in accepted or not owners:
        return
    raise ConfigError(
        f"{model!r} is a {class_name} (the {' or '.join(owners)} backend's), which the "
        f"{backend!r} backend doesn't load: plan it with backend={owners[0]!r} "
        f"(--backend {owners[0]}), or leave the backend out to infer it."
    )


_DEVICE_NAME = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def _plan_device(device: str, budget_bytes: int | None) -> tuple[str, bool]:
    """The device to plan for, and whether it is absent from this machine: with a budget, a
    well-formed device name needs no hardware (a plan for a card you may not own)."""
    from ._device import resolve_device
    from ._exceptions import ConfigError

    try:
        return resolve_device(device), False
    except ConfigError as exc:
        if budget_bytes is not None and _DEVICE_NAME.match(device):
            return device, True
        if _DEVICE_NAME.match(device):
            raise ConfigError(
                f"{exc} To plan for a {device} device that is not here, give its memory: "
                "budget_bytes=... (deskgen plan --device cuda --budget 16GB)."
            ) from exc
        raise


def _parameters(
    backend: str, model: str, options: dict[str, Any]
) -> tuple[dict[str, int], dict[str, int], str]:
    """Parameters per component, bytes of components saved quantized, and where from."""
    folder = Path(os.path.expanduser(model))
    if not (folder / "model_index.json").is_file():
        folder = _cached_folder(model) or folder
    sizes: dict[str, int] = {}
    saved: dict[str, int] = {}
    source = "published"
    if (folder / "model_index.json").is_file():
        sizes = _folder_parameters(folder)
        saved = _saved_quantized_bytes(folder)
        source = "files"
    elif (single := single_file_sizes(model)) is not None:
        sizes, source = single, "files"
    memory = _memory_profile(backend)
    if not sizes and memory is not None:
        sizes = dict(memory.parameters)
    for component, (option, default) in (memory.added_components if memory else {}).items():
        given = options.get(option) or [None]
        parts = given if isinstance(given, list) else [given]
        total = 0
        for part in parts:
            part_folder = Path(os.path.expanduser(str(part))) if part else None
            files = (
                list(part_folder.glob("*.safetensors"))
                if part_folder and part_folder.is_dir()
                else []
            )
            total += sum(_safetensors_elements(f) for f in files) or default
        sizes[component] = total
    return sizes, saved, source


def _budget(device: str, budget_bytes: int | None) -> tuple[int, Literal["gpu", "ram", "given"]]:
    """The memory to plan in: the given budget, else `available_bytes` (a GPU's free memory
    with what torch's allocator holds unused, which the load can reuse; the available RAM);
    on devices it can't read (MPS, which shares the RAM; XPU), the available RAM as before."""
    from ._device import available_bytes
    from ._exceptions import ConfigError

    if budget_bytes is not None:
        return budget_bytes, "given"
    available = available_bytes(device)
    if device.startswith("cuda"):
        if available is None:
            raise ConfigError(
                f"The free memory of {device} can't be read: give the memory to plan in "
                "(budget_bytes=..., deskgen plan --budget 16GB)."
            )
        return available, "gpu"
    if available is None:
        available = available_bytes("cpu")
    assert available is not None  # the RAM is always known
    return available, "ram"


def plan_memory(
    backend: str | None = None,
    *,
    model: str | None = None,
    mode: MemoryMode = "auto",
    device: str = "auto",
    dtype: str = "auto",
    budget_bytes: int | None = None,
    method: Literal["quanto", "torchao", "bitsandbytes"] = "torchao",
    allow_quantization: bool = True,
    quantization: QuantConfig | None = None,
    **options: Any,
) -> MemoryPlan:
    """Plan how to load ``model`` on ``device`` in the memory at hand (see the module).

    Args:
        backend: the backend; ``None``: the one the model's index says (`infer_backend`), or
            ``sdxl`` without a model.
        model: a hub id, a pipeline folder, or a single-file ``.safetensors`` checkpoint
            (sized from its header) for backends that read one.
        device: with ``budget_bytes``, also a device this machine lacks (``"cuda"`` on a CPU
            machine; ``dtype="auto"`` is then bfloat16 for CUDA, as on Ampere and newer).
        budget_bytes: the memory to fit in; ``None``: the free GPU memory, or the available RAM
            on the CPU.
        method: the quantization library the plan uses when it quantizes; ``bitsandbytes``
            (CUDA/XPU devices only) tries its int8, then nf4, before offloading.
        allow_quantization: whether the plan may quantize (not with LoRAs, which need full-precision
            layers; never for a folder saved quantized).
        quantization: the quantization to plan with, as given (the plan then chooses offload
            and tiling only): a GGUF denoiser is sized from the file's header (a local file, or
            a hub file in the cache), bitsandbytes/quanto/torchao components by their type.
        **options: the backend options that change the sizes (``controlnet=`` for
            sdxl-controlnet).

    Raises:
        UnknownBackendError: no such backend.
        ConfigError: a backend without known sizes or local weights (e.g. the API ones); no
            backend given and none to infer, or a model that is another backend's; a device
            that is not here, without a budget; a method the backend does not take, or
            bitsandbytes for a device that is no GPU.
        ModelNotFoundError: the GGUF file is not here (or not cached).
    """
    from ._device import dtype_name, resolve_dtype
    from ._exceptions import ConfigError
    from ._registry import get_backend_class

    if model is not None:
        _check_folder(model)
    if backend is None:
        backend = infer_backend(model) if model is not None else "sdxl"
    elif model is not None:
        _check_backend(backend, model)
    cls = get_backend_class(backend, check_installed=False)
    model = model if model is not None else cls.default_model
    if model is None or "torch" not in cls.requirements:
        raise ConfigError(f"The {backend!r} backend has no local weights to plan memory for.")
    if isinstance(quantization, dict):  # as options may carry it
        quantization = QuantConfig.model_validate(quantization)
    if quantization is not None:
        check_method(quantization, backend, cls.profile)
    resolved_device, absent = _plan_device(device, budget_bytes)
    on_gpu = resolved_device.startswith(("cuda", "xpu"))
    bnb = (quantization.method if quantization else method) == "bitsandbytes"
    if bnb and not on_gpu:
        raise ConfigError(
            "bitsandbytes quantizes onto CUDA (or XPU) GPUs: plan it for one (device='cuda', "
            "with budget_bytes=... for a card that is not here: deskgen plan --device cuda "
            "--budget 16GB --method bitsandbytes), or plan with method='torchao'."
        )
    absent_notes: list[str] = []
    if absent:
        absent_notes.append(f"{device} is not on this machine: planned for its given memory")
    if absent and dtype == "auto" and resolved_device != "cpu":
        dtype = "bfloat16" if resolved_device.startswith("cuda") else "float16"
        absent_notes.append(
            f"dtype auto is {dtype} there"
            + (
                " (CUDA cards from Ampere on; pass float16 for older ones)"
                if dtype == "bfloat16"
                else ""
            )
        )
    torch_dtype = resolve_dtype(dtype, resolved_device)
    width = 4 if dtype_name(torch_dtype) == "float32" else 2
    parameters, saved, source = _parameters(backend, model, options)
    if saved:
        allow_quantization = False
        notes_saved = [f"{', '.join(sorted(saved))} saved quantized: sized by their files"]
    else:
        notes_saved = []
    if not parameters and not saved:
        raise ConfigError(
            f"No sizes for {model!r}: give a local pipeline folder (or cache it) so its "
            "safetensors headers can be read."
        )
    budget, budget_source = _budget(resolved_device, budget_bytes)
    memory = cls.profile.memory
    work = (memory.work_bytes if memory else DEFAULT_WORK_BYTES) * (2 if width == 4 else 1)
    notes: list[str] = absent_notes + notes_saved
    main = denoiser_of(cls, parameters)
    fixed: dict[str, int] = {}  # sized by the quantization given
    if quantization is not None:
        allow_quantization = False
        if quantization.method == "gguf":
            if main is None:
                raise ConfigError(f"{model!r} has no denoiser for a GGUF file to replace.")
            from ._planner_sizes import gguf_bytes

            fixed[main], label = gguf_bytes(quantization, width, cache_dir=options.get("cache_dir"))
            notes.append(f"{main} sized from the GGUF file's header ({label})")
            quantization = quantization.model_copy(update={"components": (main,)})
        else:
            key = (
                f"{quantization.weights} (bitsandbytes)"
                if quantization.method == "bitsandbytes" and quantization.weights == "int8"
                else str(quantization.weights)
            )
            for name in quantization.components or cls.profile.default_quantized:
                if name in parameters:
                    fixed[name] = quantized_bytes(parameters[name], width, LINEAR_SHARE, key)
    elif not allow_quantization and not saved:
        notes.append(
            "plans without quantization (LoRAs need full-precision layers; fused QKV "
            "projections can't fuse quantized ones)"
        )
    if source == "published":
        notes.append(f"sizes are the published ones of {cls.default_model or backend}")

    large = [n for n, p in parameters.items() if p > LARGE] if allow_quantization else []
    denoiser = [n for n in parameters if n in DENOISERS] if allow_quantization else []

    def weight_key(weights: str) -> str:
        return "int8 (bitsandbytes)" if bnb and weights == "int8" else weights

    def candidate(plan: Plan) -> tuple[int, dict[str, int]]:
        quantize, offload, tiled, weights = plan
        sizes = {
            n: fixed[n]
            if n in fixed
            else quantized_bytes(p, width, LINEAR_SHARE, weight_key(weights))
            if n in quantize
            else p * width
            for n, p in parameters.items()
        } | saved
        if offload == "none":
            resident = sum(sizes.values())
        elif offload == "model":
            resident = max(sizes.values())
        else:  # sequential: a layer at a time
            resident = max(sizes.values()) // 8
        need = resident + int(work * ((1 - TILED_SAVING) if tiled else 1))
        return need, sizes

    plans = ladder(mode, on_gpu, denoiser, large, bnb=bnb)
    if quantization is not None:  # the quantization is given: offload and tiling only
        plans = [([], offload, tiled, "int8") for _, offload, tiled, _ in plans]
        plans = [p for i, p in enumerate(plans) if p not in plans[:i]]
    chosen = plans[-1]
    for plan in plans:
        need, _ = candidate(plan)
        if need <= budget:
            chosen = plan
            break
    quantize, offload, tiled, weights = chosen
    need, sizes = candidate(chosen)
    fits = need <= budget
    if not fits:
        notes.append(
            "estimates: weights from the files or published counts, working memory a rule of "
            "thumb; even this plan does not fit: free memory, use a smaller model, or mode='low'"
            if mode != "low"
            else "does not fit even in 'low': free memory, or use a smaller model"
        )
    config = quantization
    if quantize:
        from .quant._weights import check_supported, installed

        try:
            if bnb:
                if not installed("bitsandbytes"):
                    raise ConfigError(
                        "bitsandbytes is not installed (pip install 'deskgen[bitsandbytes]')"
                    )
            else:
                check_supported("int8", method)  # type: ignore[arg-type]
        except Exception as exc:  # the library is missing: say so, plan without it
            notes.append(f"quantization skipped: {exc}")
            quantize = []
            need, sizes = candidate(([], offload, tiled, weights))
            fits = need <= budget
        else:
            config = QuantConfig(
                method=method,
                weights="nf4" if bnb and weights == "nf4" else "int8",
                components=tuple(quantize),
            )
    if allow_quantization and not bnb and (not fits or offload == "sequential"):
        notes += four_bit_notes(cls.profile, parameters, width, main, share=LINEAR_SHARE)
    return MemoryPlan(
        backend=backend,
        model=model,
        mode=mode,
        device=resolved_device,
        dtype=dtype_name(torch_dtype),
        budget_bytes=budget,
        budget_source=budget_source,
        sizes_from=source,  # type: ignore[arg-type]
        component_bytes=sizes,
        quantization=config,
        offload=offload,
        vae_tiling=tiled,
        vae_slicing=tiled,
        device_bytes=need,
        fits=fits,
        notes=notes,
        methods=list(methods_taken(cls.profile)),
    )
