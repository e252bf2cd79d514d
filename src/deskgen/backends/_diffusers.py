"""Shared machinery of the diffusers-based backends (``sdxl``, ``sd``).

What deskgen adds around a stock diffusers pipeline, and why:

- **Per-request pipeline views.** A pipeline object keeps per-call state (``_guidance_scale``,
  the scheduler's step index...), so each request gets a fresh scheduler (``from_config``) and a
  new pipeline object over the *same* modules: no weights are copied.
- **Prompt encoding under a lock.** Fast tokenizers raise "Already borrowed" when shared between
  threads; deskgen calls the pipeline's own ``encode_prompt`` under a lock and hands the
  embeddings to ``__call__``, which is exactly what ``__call__`` does with a text prompt.
- **Whole calls serialised only when diffusers mutates shared modules.** SDXL switches the
  shared VAE between float16/bfloat16 and float32 inside a call when ``force_upcast`` is set;
  with such weights requests on one generator run one at a time.
- **``output_type="np"``** so NaN outputs are caught before the float-to-uint8 cast hides them
  as black images; ``numpy_to_pil`` is then the same conversion diffusers' ``"pil"`` does.

Nothing else changes the numbers: the same arguments and seed give the same pixels as a
hand-written diffusers call.
"""

from __future__ import annotations

import abc
import contextlib
import inspect
import json
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from .._device import dtype_name, free_accelerator_memory, resolve_device, resolve_dtype
from .._exceptions import (
    BackendError,
    ConfigError,
    DeskgenError,
    GeneratorClosedError,
    InvalidOutputError,
    InvalidRequestError,
    ModelLoadError,
    ModelMismatchError,
    ModelNotFoundError,
    UnsupportedOperationError,
)
from .._hub import is_local
from .._hub import offline as _offline
from .._images import fit_size, prepare_image
from .._lora import LoraSpec, as_lora_spec
from ..prompts import PromptPlan, TextEncoderSpec
from ..quant._config import ComponentMemory, QuantConfig
from ._base import Backend, BackendOptions, BackendOutput, Job
from ._request_memory import HINT as OOM_HINT
from ._request_memory import (
    check_request_fits,
    estimate_request_memory,
    is_out_of_memory,
    out_of_memory_error,
)
from ._speed import SPEED_OPTIONS, CompileMode, DistillKind, Preset, Recipe, preset_recipe

if TYPE_CHECKING:
    from PIL import Image

    from .._controls import Control
    from .._models import GenerationRequest, Mode
    from ._adapters import LoraAdapters

__all__ = ["DiffusersBackend", "DiffusersOptions", "ImageInputs", "denoising_steps"]

MAX_ASPECT = 4.0
"""Photos more elongated than 4:1 are centre-cropped to 4:1 before sizing."""
MAX_SIDE = 8192
"""No output side may exceed this many pixels (the request's own limit)."""

# diffusers' and transformers' words for "no safetensors file" (not for a corrupt one)
_MISSING_SAFETENSORS = re.compile(
    r"Could not find the necessary `safetensors` weights|no file named \S+\.safetensors"
)


class DiffusersOptions(BackendOptions):
    """Loading options of the diffusers backends."""

    variant: str | None = None
    """Weight variant to load, e.g. ``"fp16"`` (half the download for SDXL on the Hub)."""
    revision: str | None = None
    """Hub branch, tag or commit."""
    cache_dir: str | None = None
    local_files_only: bool = False
    """Never contact the Hub (also implied by ``HF_HUB_OFFLINE=1``)."""
    vae: str | None = None
    """A VAE to use instead of the model's own: hub id or folder of an ``AutoencoderKL``, e.g.
    ``madebyollin/sdxl-vae-fp16-fix``, which does not overflow in float16."""
    allow_pickle: bool = False
    """Also accept pickle weights (``.bin``/``.ckpt``) when no safetensors exist. Pickle files
    can run code when loaded: only for checkpoints you trust."""
    loras: list[LoraSpec] = Field(default_factory=list)
    """LoRAs to load with the model (a `LoraSpec`, or a path), checked and applied in order;
    more can be loaded later with `DeskGenerator.load_lora`."""
    fuse_loras: bool = False
    """Fuse the LoRAs into the weights once loaded (each at its weight): faster steps, but every
    request then uses exactly them until `DeskGenerator.unfuse_loras`."""
    quantization: QuantConfig | None = None
    """Quantize components as they load (`QuantConfig`): each is read in full precision,
    quantized, then the next; ``None``: none."""
    offload: Literal["auto", "none", "model", "sequential"] = "none"
    """``model``: diffusers' model CPU offload, each component moved to the GPU only while it
    runs; ``sequential``: layer by layer, the least memory and the slowest; ``auto``: ``model``
    when the weights (as loaded, quantized or not) would leave less than a fifth of the GPU's
    free memory for the work, else none, and none on the CPU. Offload needs a GPU; requests
    then run one at a time."""
    vae_tiling: bool = False
    """Decode (and encode) the image in tiles: large images in less memory."""
    vae_slicing: bool = False
    """Decode a batch one image at a time: several images in less memory."""
    preset: Preset | None = None
    """``quality`` (the model's scheduler, 50 steps), ``balanced`` (DPM++ 2M Karras, 25 steps)
    or ``fast`` (a few-step ``distill_lora``, fused, with its scheduler, steps and guidance):
    the defaults of requests that leave steps/guidance ``None``. ``None``: the backend's own
    (30 steps, the model's scheduler). See `deskgen.backends._speed`."""
    distill_lora: LoraSpec | None = None
    """``preset="fast"``: an LCM, SDXL-Lightning, Hyper-SD or TCD LoRA for this model (path,
    `LoraSpec` or hub ``user/repo/file``)."""
    distill_kind: DistillKind | None = None
    """Which distillation ``distill_lora`` is; ``None``: told from its file name, else its
    folder's or hub repo's name."""
    compile: bool = False
    """``torch.compile`` the denoiser (in place): slow first requests, faster steps after; new
    sizes and LoRA weight changes recompile."""
    compile_mode: CompileMode = "default"
    """``torch.compile`` mode, e.g. ``max-autotune`` (longest compile, fastest on GPUs)."""
    channels_last: bool = False
    """The UNet and VAE in channels-last memory format (faster convolutions on GPUs)."""
    fuse_qkv: bool = False
    """Fuse the attention's query/key/value projections into one matmul (diffusers'
    ``fuse_qkv_projections``). LoRAs must then be fused, and can't change afterwards."""
    attention: Literal["sdpa", "eager"] = "sdpa"
    """``sdpa``: PyTorch's scaled-dot-product attention (diffusers' default); ``eager``: the
    classic matmul-softmax attention, to measure what SDPA gains."""

    @field_validator("distill_lora", mode="before")
    @classmethod
    def _distill_spec(cls, value: Any) -> Any:
        if value is None:
            return None
        spec = as_lora_spec(value)
        return spec if spec.adapter_name else spec.model_copy(update={"adapter_name": "distill"})

    @field_validator("loras", mode="before")
    @classmethod
    def _lora_specs(cls, value: Any) -> Any:
        if isinstance(value, (str, os.PathLike, LoraSpec, dict)):
            value = [value]
        if isinstance(value, (list, tuple)):
            return [as_lora_spec(item) for item in value]
        return value


@dataclass
class ImageInputs:
    """What `DiffusersBackend._image_inputs` adds to a pipeline call, and reports back."""

    call: dict[str, Any]
    """Keyword arguments for the pipeline's ``__call__``."""
    request_update: dict[str, Any] = field(default_factory=dict)
    """Resolved request fields (e.g. the control scales used)."""
    warnings: list[str] = field(default_factory=list)
    controls: list[Control] = field(default_factory=list)
    control_images: list[Image.Image] = field(default_factory=list)


def component_class(entry: Any, *, name: str) -> Any:
    """The class a model index entry ``[library, class]`` names, from diffusers or transformers
    only (a folder's JSON must not make deskgen import any module it likes).

    Raises:
        ModelLoadError: another library, or no such class in it.
    """
    import importlib

    library, class_name = [*entry, None, None][:2] if isinstance(entry, list) else (None, None)
    if library not in ("diffusers", "transformers") or not isinstance(class_name, str):
        raise ModelLoadError(
            f"The model index names {entry!r} for {name!r}: deskgen loads components of the "
            "diffusers and transformers libraries only."
        )
    cls = getattr(importlib.import_module(library), class_name, None)
    if cls is None:
        raise ModelLoadError(
            f"{library} has no class {class_name!r} (component {name!r}): update {library}, or "
            "the folder was saved by a newer version."
        )
    return cls


def _is_module_entry(entry: Any) -> bool:
    """Whether a model index entry ``[library, class]`` is a torch module (has weights)."""
    import torch

    try:
        cls = component_class(entry, name="?")
    except ModelLoadError:
        return False
    return isinstance(cls, type) and issubclass(cls, torch.nn.Module)


def denoising_steps(steps: int, strength: float | None) -> int:
    """Steps diffusers runs: all of them for txt2img, ``int(steps * strength)`` for img2img."""
    if strength is None:
        return steps
    return min(int(steps * strength), steps)


def weights_source(name: str, *, what: str, hint: str) -> tuple[bool, str]:
    """``(local, source)`` for a hub id or a folder of one model (``source`` is what
    ``from_pretrained`` takes: the expanded folder, or the id). A folder must hold a
    ``config.json``; ``what`` and ``hint`` word the error otherwise.

    Raises:
        ModelNotFoundError: "No {what} folder with a config.json at ...: {hint}"
    """
    local = is_local(name)
    source = os.path.expanduser(name) if local else name
    if local and not os.path.isfile(os.path.join(source, "config.json")):
        raise ModelNotFoundError(f"No {what} folder with a config.json at {name!r}: {hint}")
    return local, source


def missing_hub_message(model: str, exc: BaseException, *, offline: bool = False) -> str:
    """How to get ``model`` when the Hub can't give it: the download command, the licence page
    for gated repos, and the first line of what went wrong."""
    why = (
        "is not in the local Hugging Face cache and downloads are off "
        "(HF_HUB_OFFLINE=1 or local_files_only=True)"
        if offline or _offline()
        else "could not be fetched from the Hugging Face Hub (wrong id, gated or private "
        "repo without a token, or no network)"
    )
    return (
        f"Model {model!r} {why}. Download it once on a machine with network "
        f"(`hf download {model}`; a gated repo needs its licence accepted at "
        f"https://huggingface.co/{model} and `hf auth login` first) and point HF_HOME "
        "at that cache, or pass the path of a local folder saved with save_pretrained(). "
        f"Details: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    )


class DiffusersBackend(Backend):
    """Base of the Stable Diffusion family backends; subclasses set the class names."""

    extra: ClassVar[str] = "local"
    requirements: ClassVar[tuple[str, ...]] = ("torch", "diffusers", "transformers", "accelerate")
    options_class: ClassVar[type[BackendOptions]] = DiffusersOptions

    txt2img_class: ClassVar[str]
    img2img_class: ClassVar[str | None]
    """``None``: the model has no image input (photos are refused)."""
    accepted_pipelines: ClassVar[frozenset[str]]
    family: ClassVar[str]
    """Human name of the model family, for messages."""
    default_guidance: ClassVar[float]
    default_strength: ClassVar[float] = 0.6
    """img2img strength when the request leaves it ``None``."""
    default_steps: int = 30
    """Denoising steps when the request leaves them ``None`` (an instance attribute: some
    backends choose it from the loaded model)."""
    takes_loras: ClassVar[bool] = True
    """Whether LoRAs load into this backend's UNet and CLIP text encoders."""
    takes_quantization: ClassVar[bool] = True
    """Whether ``quantization=QuantConfig(...)`` is taken (components quantized as they load)."""
    default_quantized: ClassVar[tuple[str, ...]] = ("unet",)
    """The components `QuantConfig.components` = ``None`` means."""
    takes_presets: ClassVar[bool] = True
    """Whether ``preset=`` (quality/balanced/fast) is taken."""
    speed_options: ClassVar[frozenset[str]] = SPEED_OPTIONS
    """The speed options this backend takes (the others are refused when set)."""
    denoiser: ClassVar[str] = "unet"
    """The pipeline component that runs every step (what ``compile`` compiles)."""

    def __init__(self, options: BackendOptions) -> None:
        super().__init__(options)
        assert isinstance(options, DiffusersOptions)
        self.opts: DiffusersOptions = options
        if not self.takes_loras and (options.loras or options.fuse_loras):
            raise UnsupportedOperationError(
                f"The {self.name!r} backend does not take LoRAs yet: leave out loras=... (the "
                "'sdxl', 'sd' and 'sdxl-controlnet' backends take them)."
            )
        self.quantized_components: dict[str, ComponentMemory] = {}
        """Components quantized: their bytes before and after."""
        self.quantization_configs: dict[str, QuantConfig] = {}
        """How each quantized component was quantized (what `save_quantized` records)."""
        self._check_quantization_config(
            options.quantization, loras=bool(options.loras or options.distill_lora)
        )
        recipe = self._check_speed_options(options)
        fuse = options.fuse_loras or (
            options.preset == "fast" and "fuse_loras" not in options.model_fields_set
        )
        if options.fuse_qkv and (options.loras or options.distill_lora) and not fuse:
            raise ConfigError(
                "fuse_qkv=True merges the attention projections that LoRAs change: fuse the "
                "LoRAs too (fuse_loras=True), or leave fuse_qkv off."
            )
        import torch

        self._device = resolve_device(options.device)
        self.offload: str = options.offload
        """The offload in effect: ``auto`` is resolved to ``none`` or ``model`` at load."""
        on_gpu = self._device.startswith(("cuda", "xpu"))
        if options.offload in ("model", "sequential") and not on_gpu:
            # before the big weights load; device="auto" may have resolved to the CPU
            raise ConfigError(
                f"offload={options.offload!r} moves weights between the CPU and a GPU, but the "
                f"device is {self._device!r}: use it with device='cuda' on a GPU machine, or "
                "offload='auto'/'none'."
            )
        if self.offload == "auto" and not on_gpu:
            self.offload = "none"
        self._torch_dtype = resolve_dtype(options.dtype, self._device)
        self._encode_lock = threading.Lock()
        self._closed = False
        self._txt2img: Any = self._load()
        if recipe is not None:
            from ._speed import use_scheduler

            use_scheduler(self._txt2img, recipe)
        self._img2img: Any = (
            self._construct(self._pipeline_class(self.img2img_class), self._txt2img)
            if self.img2img_class is not None
            else None
        )
        self.guidance_default: float = self.default_guidance
        """Guidance scale when the request leaves it ``None``."""
        self._call_extras: dict[str, Any] = {}
        """Pipeline call arguments the preset adds (e.g. TCD's ``eta``)."""
        self._scheduler_settings: dict[str, Any] = {}
        """The preset's scheduler settings and call arguments, for results and records."""
        self.performance: list[str] = []
        """The preset and speed options in effect, in words (what benchmarks report)."""
        if recipe is not None:
            self.default_steps = recipe.steps
            if recipe.guidance is not None:
                self.guidance_default = recipe.guidance
            self._call_extras = dict(recipe.call)
            self._scheduler_settings = {**recipe.scheduler_config, **recipe.call}
            self.performance.append(f"{options.preset}: {recipe.describe()}")
        vae = self._txt2img.vae
        # diffusers flips the shared VAE's dtype inside SDXL calls when it must upcast
        mutates_vae = (
            self._txt2img.__class__.__name__.startswith("StableDiffusionXL")
            and bool(getattr(vae.config, "force_upcast", False))
            and self._torch_dtype != torch.float32
        )
        self._call_lock: threading.Lock | None = threading.Lock() if mutates_vae else None
        self._upcasts_vae = mutates_vae and self._torch_dtype == torch.float16
        """Whether the pipeline decodes in float32 (diffusers upcasts only float16 VAEs)."""
        self._request_lock: threading.Lock | None = (
            threading.Lock() if self.offload != "none" else None
        )
        """Whole requests (encoding included) one at a time: accelerate's CPU offload hooks
        move shared modules between devices."""
        self.vae_scale_factor: int = int(self._txt2img.vae_scale_factor)
        self.native_size: int = self._native_size(self._txt2img)
        self._uses_cfg_embeds = self._takes_cfg_embeds(self._txt2img)
        self._adapters: LoraAdapters | None = None
        if self.takes_loras:
            from ._adapters import LoraAdapters

            self._adapters = LoraAdapters(
                self._txt2img, backend=self.name, quantized=sorted(self.quantized_components)
            )
            if self.opts.distill_lora is not None:
                distill = self._adapters.load(self.opts.distill_lora)
                # the preset's scheduler and steps need it: every request uses it
                self._adapters.require(distill.name, "preset='fast' runs with it")
            for spec in self.opts.loras:
                self._adapters.load(spec)
            if fuse and self._adapters.loaded:
                self._adapters.fuse(self._adapters.resolve(None))
        from ._speed import apply_speed_options

        self.performance += apply_speed_options(
            self._txt2img,
            denoiser=self.denoiser,
            compile=options.compile,
            compile_mode=options.compile_mode,
            channels_last=options.channels_last,
            fuse_qkv=options.fuse_qkv,
            attention=options.attention,
        )
        if options.fuse_qkv and self._adapters is not None:
            self._adapters.pin(
                "the attention projections are fused (fuse_qkv=True): LoRAs can't be loaded, "
                "unloaded or unfused; create a generator without fuse_qkv to change them."
            )

    def _check_speed_options(self, options: DiffusersOptions) -> Recipe | None:
        """Refuse presets and speed options this backend can't honour; the preset's recipe."""
        if options.preset is not None and not self.takes_presets:
            raise UnsupportedOperationError(
                f"The {self.name!r} backend takes no preset=...: {self._no_preset_hint()}"
            )
        if options.preset != "fast" and (
            options.distill_lora is not None or options.distill_kind is not None
        ):
            raise ConfigError(
                "distill_lora=/distill_kind= describe the few-step LoRA of preset='fast': add "
                "preset='fast', or load the file as an ordinary LoRA with loras=[...]."
            )
        if "compile_mode" in options.model_fields_set and not options.compile:
            raise ConfigError("compile_mode= has no effect without compile=True: add it.")
        if options.fuse_qkv and options.attention == "eager":
            raise ConfigError(
                "fuse_qkv=True installs diffusers' fused SDPA attention, which replaces "
                "attention='eager': use one of them."
            )
        defaults = DiffusersOptions.model_fields
        unsupported = sorted(
            name
            for name in SPEED_OPTIONS
            if name not in self.speed_options and getattr(options, name) != defaults[name].default
        )
        if unsupported:
            raise ConfigError(
                f"The {self.name!r} backend does not take {', '.join(unsupported)}: it takes "
                f"{', '.join(sorted(self.speed_options)) or 'no speed options'}."
            )
        if options.fuse_qkv and options.quantization is not None:
            raise ConfigError(
                "fuse_qkv=True can't fuse quantized projections: use quantization or fuse_qkv, "
                "not both."
            )
        if options.compile and options.offload == "sequential":
            raise ConfigError(
                "compile=True and offload='sequential' don't mix (accelerate moves every layer "
                "between devices at each call): use offload='model' or 'none' with compile (with "
                "memory=..., the planner chose sequential offload: give offload= yourself)."
            )
        if options.preset is None:
            return None
        return preset_recipe(options.preset, kind=options.distill_kind, lora=options.distill_lora)

    def _no_preset_hint(self) -> str:
        """How to trade quality for speed on a backend without presets."""
        return "set steps= on requests instead."

    def _check_quantization_config(self, config: QuantConfig | None, *, loras: bool) -> None:
        """Refuse what can't work before any weight loads."""
        if config is None:
            return
        if not self.takes_quantization:
            raise UnsupportedOperationError(
                f"The {self.name!r} backend does not take quantization=QuantConfig(...) yet: use "
                "its own options (hidream: quantize_text_encoders=..., quantize_transformer=...)."
            )
        if loras:
            raise ConfigError(
                "LoRAs can't be applied to quantized weights (their low-rank deltas need the "
                "full-precision layers): generate with the LoRAs unquantized, or drop "
                "quantization=...; fusing LoRAs before quantizing is planned."
            )
        from ..quant._weights import check_supported

        check_supported(config.weights, config.method, activations=config.activations)

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
        names = config.components if config.components is not None else self.default_quantized
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
                    weighted = sorted(k for k in index if _is_module_entry(index[k]))
                    raise ConfigError(
                        f"QuantConfig names {name!r}, which has no weights to quantize: choose "
                        f"from {', '.join(weighted)}."
                    )
                loader: Any = cls  # a diffusers or transformers model class
                with self._translating_load_errors(self.opts.model, local=local):
                    module = loader.from_pretrained(source, subfolder=name, **self._load_kwargs())
            self._quantize_component(name, module, config)
            extra[name] = module

    def _quantize_component(self, name: str, module: Any, config: QuantConfig) -> None:
        """Quantize one component in place (each of a list, e.g. several ControlNets) and
        record its bytes before and after."""
        from ..quant import module_bytes, quantize_weights

        parts = list(module) if isinstance(module, (list, tuple)) else [module]
        before = sum(module_bytes(part) for part in parts)
        for part in parts:
            used = quantize_weights(
                part,
                weights=config.weights,
                backend=config.method,
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
        names = config.components if config.components is not None else self.default_quantized
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
        from ..quant import module_bytes
        from ..quant._saved import (
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

    def _native_size(self, pipe: Any) -> int:
        """The side of the model's native square, in pixels."""
        return int(pipe.unet.config.sample_size) * self.vae_scale_factor

    def _takes_cfg_embeds(self, pipe: Any) -> bool:
        """Whether classifier-free guidance needs negative embeddings (not for LCM-style
        guidance-embedded UNets)."""
        return getattr(pipe.unet.config, "time_cond_proj_dim", None) is None

    def _size_multiple(self) -> int:
        """What width and height must be multiples of."""
        return max(8, self.vae_scale_factor)

    # -- loading -----------------------------------------------------------------------------

    def _pipeline_class(self, name: str) -> Any:
        import diffusers

        return getattr(diffusers, name)

    def _read_model_index(self, model: str, local: bool) -> dict[str, Any]:
        if local:
            folder = Path(os.path.expanduser(model))
            if not folder.exists():
                raise ModelNotFoundError(
                    f"No model folder at {model!r}. Pass an existing folder saved with "
                    f"save_pretrained(), or a Hugging Face hub id such as {self.default_model!r}."
                )
            index = folder / "model_index.json"
            if not index.is_file():
                hint = (
                    " Single-file checkpoints (.safetensors/.ckpt) are not supported: convert "
                    "them to the diffusers layout first (diffusers' from_single_file + "
                    "save_pretrained)."
                    if folder.is_file()
                    else ""
                )
                raise ModelLoadError(
                    f"{model!r} is not a diffusers pipeline folder (no model_index.json).{hint}"
                )
            try:
                data: dict[str, Any] = json.loads(index.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ModelLoadError(
                    f"{str(index)!r} is not valid JSON ({exc}): the folder is damaged; save or "
                    "download the model again."
                ) from exc
            return data
        from diffusers import DiffusionPipeline

        try:
            config = DiffusionPipeline.load_config(
                model,
                revision=self.opts.revision,
                cache_dir=self.opts.cache_dir,
                local_files_only=self.opts.local_files_only,
            )
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(self._missing_hub_message(model, exc)) from exc
        return dict(config)

    def _missing_hub_message(self, model: str, exc: BaseException) -> str:
        return missing_hub_message(model, exc, offline=self.opts.local_files_only)

    def _check_family(self, index: dict[str, Any], model: str) -> None:
        class_name = str(index.get("_class_name", ""))
        text_encoder = index.get("text_encoder")
        if index.get("requires_aesthetics_score") or (
            isinstance(text_encoder, list) and text_encoder[-1] is None
        ):
            raise ModelMismatchError(
                f"{model!r} is an SDXL refiner (aesthetic-score conditioning, no first text "
                "encoder); deskgen's backends load base models. Use the SDXL base model, e.g. "
                "stabilityai/stable-diffusion-xl-base-1.0."
            )
        if class_name not in self.accepted_pipelines:
            from .._registry import list_backends

            other = {
                "StableDiffusionXL": "sdxl",
                "StableDiffusion": "sd",
            }
            suggestion = next(
                (name for prefix, name in other.items() if class_name.startswith(prefix)), None
            )
            known = {info.name for info in list_backends()}
            hint = (
                f" Use DeskGenerator({suggestion!r}, model=...) for it."
                if suggestion and suggestion in known and suggestion != self.name
                else ""
            )
            accepted = ", ".join(sorted(self.accepted_pipelines))
            raise ModelMismatchError(
                f"{model!r} is a {class_name or 'non-diffusers'} model, but the {self.name!r} "
                f"backend loads {self.family} weights ({accepted}).{hint}"
            )

    def _load(self) -> Any:
        model = self.opts.model
        local = is_local(model)
        index = self._read_model_index(model, local)
        self._check_family(index, model)
        cls = self._pipeline_class(self.txt2img_class)
        source = os.path.expanduser(model) if local else model
        extra: dict[str, Any] = {}
        if self.opts.vae is not None:
            extra["vae"] = self._load_vae(self.opts.vae)
        extra.update(self._extra_components(source, index))
        if local:
            self._load_saved_quantized(index, source, extra)
        self._quantize_at_load(index, source, local, extra)
        with self._translating_load_errors(model, local=local):
            pipe = cls.from_pretrained(source, **extra, **self._load_kwargs())
        try:
            self._place(pipe)
        except DeskgenError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"Could not move {model!r} to {self._device} ({type(exc).__name__}: {exc}). "
                "Free memory on the device, or use dtype='float16'/'bfloat16' to halve it."
            ) from exc
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _load_kwargs(self) -> dict[str, Any]:
        """What every ``from_pretrained`` of the model's own files takes from the options."""
        return {
            "dtype": self._torch_dtype,
            "use_safetensors": None if self.opts.allow_pickle else True,
            "variant": self.opts.variant,
            "revision": self.opts.revision,
            "cache_dir": self.opts.cache_dir,
            "local_files_only": self.opts.local_files_only,
        }

    def _place(self, pipe: Any) -> None:
        """Put the loaded pipeline on its device, offloaded if asked, VAE tiled/sliced if asked
        (backends may quantize first)."""
        if self.offload == "auto":
            self.offload = self._auto_offload(pipe)
        if self.offload == "model":
            pipe.enable_model_cpu_offload(device=self._device)
        elif self.offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=self._device)
        else:
            pipe.to(self._device)
        if self.opts.vae_tiling:
            pipe.vae.enable_tiling()
        if self.opts.vae_slicing:
            pipe.vae.enable_slicing()

    def _auto_offload(self, pipe: Any) -> str:
        """``model`` when the weights would leave under a fifth of the free GPU memory."""
        import torch

        from ..quant import module_bytes

        weights = sum(
            module_bytes(module)
            for module in pipe.components.values()
            if hasattr(module, "parameters")
        )
        free, _ = torch.cuda.mem_get_info(torch.device(self._device))
        return "model" if weights > 0.8 * free else "none"

    def _extra_components(self, source: str, index: dict[str, Any]) -> dict[str, Any]:
        """Components to load the pipeline with besides the model's own (e.g. ControlNets);
        ``source`` is the model's hub id or expanded folder, ``index`` its model_index.json."""
        return {}

    @contextlib.contextmanager
    def _translating_load_errors(
        self, model: str, *, local: bool, variant: str | EllipsisType | None = ...
    ) -> Iterator[None]:
        """Turn what ``from_pretrained`` raises into deskgen's loading errors (``variant``: the
        one asked for, by default the option's)."""
        variant = self.opts.variant if isinstance(variant, EllipsisType) else variant
        try:
            yield
        except DeskgenError:
            raise
        except (OSError, ValueError) as exc:
            text = str(exc)
            if _MISSING_SAFETENSORS.search(text):
                which = f" for variant {variant!r}" if variant else ""
                raise ModelLoadError(
                    f"{model!r} has no safetensors weights{which}. "
                    "deskgen loads safetensors only by default because pickle files can run code; "
                    "pass allow_pickle=True if you trust this checkpoint, or convert it to "
                    f"safetensors. Details: {text.splitlines()[0]}"
                ) from exc
            lowered = text.lower()
            missing = ("cache", "connect", "gated", "401", "403", "not a valid model identifier")
            if not local and any(word in lowered for word in missing):
                raise ModelNotFoundError(self._missing_hub_message(model, exc)) from exc
            raise ModelLoadError(
                f"Could not load {model!r}: {text.splitlines()[0] if text else exc!r}. If a "
                "weight file is corrupt or incomplete, delete it and download it again."
            ) from exc
        except Exception as exc:  # torch / safetensors errors: corrupt or truncated files, OOM
            raise ModelLoadError(
                f"Could not load {model!r} ({type(exc).__name__}: {exc}). If the files are "
                "incomplete, delete them and download again."
            ) from exc

    def _load_vae(self, name: str) -> Any:
        from diffusers import AutoencoderKL

        local, source = weights_source(
            name,
            what="VAE",
            hint="pass a folder saved with AutoencoderKL.save_pretrained() or a hub id such as "
            "madebyollin/sdxl-vae-fp16-fix.",
        )
        try:
            return AutoencoderKL.from_pretrained(
                source,
                dtype=self._torch_dtype,
                use_safetensors=None if self.opts.allow_pickle else True,
                cache_dir=self.opts.cache_dir,
                local_files_only=self.opts.local_files_only,
            )
        except (OSError, ValueError) as exc:
            if local:
                raise ModelLoadError(f"Could not load the VAE {name!r}: {exc}") from exc
            raise ModelNotFoundError(self._missing_hub_message(name, exc)) from exc

    def _construct(self, cls: Any, template: Any, **overrides: Any) -> Any:
        """A ``cls`` pipeline over ``template``'s modules (no weights copied), with overrides."""
        params = inspect.signature(cls.__init__).parameters
        components = {k: v for k, v in template.components.items() if k in params}
        components.update(overrides)
        config = {
            k: template.config[k]
            for k in params
            if k not in components and k in template.config and not k.startswith("_")
        }
        pipe = cls(**components, **config)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _view(self, template: Any) -> Any:
        """A per-request pipeline object with its own scheduler over the shared modules."""
        scheduler = template.scheduler.from_config(template.scheduler.config)
        return self._construct(type(template), template, scheduler=scheduler)

    # -- Backend interface -------------------------------------------------------------------

    @property
    def device(self) -> str:
        return self._device

    @property
    def dtype(self) -> str:
        return dtype_name(self._torch_dtype)

    @property
    def pipeline(self) -> Any:
        """The loaded text-to-image pipeline (shared; do not call it from several threads)."""
        self._check_open()
        return self._txt2img

    def component_bytes(self) -> dict[str, int]:
        """Bytes of weights each pipeline module holds, quantized weights counted by what they
        really store (`deskgen.quant.module_bytes`): where the memory goes."""
        from ..quant import module_bytes

        self._check_open()
        return {
            name: module_bytes(module)
            for name, module in self._txt2img.components.items()
            if hasattr(module, "parameters")
        }

    def _check_open(self) -> None:
        if self._closed or self._txt2img is None:
            raise GeneratorClosedError(
                "This generator was closed and its weights freed; create a new DeskGenerator."
            )

    def _plan_size(
        self, request: GenerationRequest, photo: Image.Image | None, *, label: str = "photo"
    ) -> tuple[int, int, list[str]]:
        """Output size from the request and the aspect ratio of ``photo`` (the image named
        ``label`` in warnings), with warnings for crops."""
        required = self._size_multiple()
        grid = self.vae_scale_factor * 8
        warnings: list[str] = []
        for name in ("width", "height"):
            value = getattr(request, name)
            if value is not None and value % required:
                lower = max(required, value // required * required)
                raise InvalidRequestError(
                    f"{name}={value} is not a multiple of {required}, which this model needs; "
                    f"use {lower} or {lower + required} (multiples of {grid} work best)."
                )
        aspect = photo.width / photo.height if photo is not None else 1.0
        if photo is not None and not 1 / MAX_ASPECT <= aspect <= MAX_ASPECT:
            clamped = min(max(aspect, 1 / MAX_ASPECT), MAX_ASPECT)
            warnings.append(
                f"The {label}'s aspect ratio {photo.width}:{photo.height} is beyond "
                f"{MAX_ASPECT:g}:1; it was centre-cropped to {clamped:.3g}:1."
            )
            aspect = clamped
        native = (self.native_size, self.native_size)
        if request.width is not None and request.height is not None:
            width, height = request.width, request.height
        elif request.width is not None:
            width = request.width
            height = max(required, round(width / aspect / required) * required)
        elif request.height is not None:
            height = request.height
            width = max(required, round(height * aspect / required) * required)
        elif photo is not None:
            width, height = fit_size(aspect, native=native, multiple=grid)
        else:
            width, height = native
        for name, value in (("width", width), ("height", height)):
            if value > MAX_SIDE:
                raise InvalidRequestError(
                    f"The {name} would be {value} px (from the {label}'s aspect ratio and the "
                    f"given size), over the {MAX_SIDE} px limit: give a smaller width/height."
                )
        explicit = request.width is not None and request.height is not None
        if explicit and photo is not None and abs(width / height - aspect) / aspect > 0.02:
            warnings.append(
                f"The {label} ({photo.width}x{photo.height}) was centre-cropped to the requested "
                f"aspect ratio {width}x{height}."
            )
        return width, height, warnings

    def _gate_exclusive(self) -> Any:
        """Wait for running requests, and hold new ones back, while the weights change."""
        assert self._adapters is not None
        return self._adapters.exclusive()

    @property
    def lora_adapters(self) -> LoraAdapters | None:
        self._check_open()
        return self._adapters

    def _with_lora_triggers(self, request: GenerationRequest) -> GenerationRequest:
        """``request`` with the trigger words of the LoRAs it uses (those it does not remove)."""
        if self._adapters is None:
            return request
        words = self._adapters.trigger_words(self._adapters.resolve(request.loras))
        removed = {w.strip().lower() for w in request.remove_words}
        words = [w for w in words if w.strip().lower() not in removed]
        if not words:
            return request
        return request.model_copy(update={"trigger_words": [*request.trigger_words, *words]})

    def prompt_encoders(self) -> list[tuple[TextEncoderSpec, Any]]:
        """The loaded pipeline's CLIP encoders with their own tokenizers and limits."""
        pipe = self._txt2img
        if pipe is None:
            self._check_open()
        encoders = []
        for spec in self.text_encoders:
            tokenizer = getattr(pipe, spec.name.replace("text_encoder", "tokenizer"), None)
            if tokenizer is None or getattr(pipe, spec.name, None) is None:
                continue
            limit = int(getattr(tokenizer, "model_max_length", spec.max_tokens))
            encoders.append((spec.model_copy(update={"max_tokens": limit}), tokenizer))
        return encoders

    def plan_prompt(self, request: GenerationRequest) -> PromptPlan:
        request = self._with_lora_triggers(request)
        # the pipeline's tokenizers are shared: every use of them holds the encode lock
        with self._encode_lock:
            return super().plan_prompt(request)

    @abc.abstractmethod
    def encode_prompt(self, pipe: Any, plan: PromptPlan, *, do_cfg: bool) -> dict[str, Any]:
        """Encode ``plan`` with ``pipe``: the pipeline's own ``encode_prompt`` for texts of one
        chunk, the chunked encoder (`deskgen.backends._chunked`) for longer ones. Returns the
        embeddings as keyword arguments for ``pipe.__call__``. Runs under the encode lock."""

    def generate(self, job: Job) -> BackendOutput:
        import numpy as np
        import torch
        from diffusers.image_processor import VaeImageProcessor

        self._check_open()
        if job.mask is not None:
            raise UnsupportedOperationError(
                f"The {self.name!r} backend does not take masks yet (no inpainting pipeline): "
                "leave out mask=..., or use the 'openai' backend for masked edits."
            )
        request = job.request
        photo = job.photo
        strength = request.strength if request.strength is not None else self.default_strength
        steps = request.steps if request.steps is not None else self.default_steps
        mode = self._mode(job, strength)
        steps_run = denoising_steps(steps, strength if mode == "img2img" else None)
        if steps_run < 1:
            minimum = math.ceil(1000 / steps) / 1000  # rounded up: int(steps*s) >= 1
            raise InvalidRequestError(
                f"strength={strength} with steps={steps} runs "
                f"int({steps} * {strength}) = 0 denoising steps, so the photo "
                f"would come back unchanged. Use strength >= {minimum:.3f} or more steps."
            )
        reference, label = self._size_reference(job)
        width, height, warnings = self._plan_size(request, reference, label=label)
        guidance = (
            request.guidance_scale if request.guidance_scale is not None else self.guidance_default
        )
        adapters = self._adapters
        lora_weights = adapters.resolve(request.loras) if adapters is not None else None
        used = adapters.used(lora_weights) if adapters is not None and lora_weights else []
        digests = {lora.name: lora.sha256 for lora in used}
        for name, digest in (request.lora_sha256 or {}).items():
            if digests.get(name, digest) != digest:
                warnings.append(
                    f"The LoRA {name!r} is another file than the one this request was recorded "
                    f"with (sha256 {digests[name][:12]}... instead of {digest[:12]}...)."
                )
        resolved = request.model_copy(
            update={
                "width": width,
                "height": height,
                "guidance_scale": guidance,
                "steps": steps,
                "strength": strength if photo is not None else request.strength,
                "loras": lora_weights,
                "lora_sha256": digests or None,
            }
        )
        template = self._img2img if mode == "img2img" else self._txt2img
        if template is None:  # closed while this request was starting
            self._check_open()
        pipe = self._view(template)
        do_cfg = guidance > 1 and self._uses_cfg_embeds

        marks: dict[str, float] = {}

        def on_step_end(view: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            marks["last_step"] = time.perf_counter()
            # the scheduler's real count: PNDM/PLMS adds a step, second-order ones double them
            job.on_step(i + 1, int(getattr(view, "num_timesteps", steps_run)))
            return kwargs

        generators = [torch.Generator("cpu").manual_seed(seed) for seed in job.seeds]
        call: dict[str, Any] = {
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "num_images_per_prompt": request.num_images,
            "generator": generators[0] if len(generators) == 1 else generators,
            "output_type": "np",
            "callback_on_step_end": on_step_end,
            **self._call_extras,
        }
        lock = self._call_lock if self._call_lock is not None else contextlib.nullcontext()
        start = time.perf_counter()
        try:
            inputs = self._image_inputs(
                job, mode=mode, width=width, height=height, strength=strength
            )
            call.update(inputs.call)
            resolved = resolved.model_copy(update=inputs.request_update)
            conditioned = time.perf_counter()
            whole = self._request_lock or contextlib.nullcontext()
            adapter_state = (
                adapters.using(lora_weights)
                if adapters is not None and lora_weights is not None
                else contextlib.nullcontext()
            )
            with whole, adapter_state:
                try:
                    with self._encode_lock, torch.no_grad():
                        call.update(self.encode_prompt(pipe, job.prompt, do_cfg=do_cfg))
                    encoded = marks["last_step"] = time.perf_counter()
                    with lock:
                        # measured here, after the requests this one waited for have let go
                        self._check_memory(
                            pipe, mode=mode, width=width, height=height, do_cfg=do_cfg, job=job
                        )
                        output = pipe(**call)
                finally:
                    self._after_request()
        except DeskgenError:
            raise
        except Exception as exc:
            if is_out_of_memory(exc):
                tiling = "" if self.opts.vae_tiling else ", vae_tiling=True"
                raise out_of_memory_error(
                    exc,
                    device=self._device,
                    what=f"generating {request.num_images} image(s) at {width}x{height}",
                    hint=f"{OOM_HINT}{tiling}.",
                ) from exc
            raise BackendError(
                f"The {self.name!r} backend failed: {type(exc).__name__}: {exc}"
            ) from exc
        finished = time.perf_counter()

        arrays = np.asarray(output.images)
        bad = [i for i in range(arrays.shape[0]) if not np.isfinite(arrays[i]).all()]
        if bad:
            raise InvalidOutputError(
                f"The model produced NaN/inf pixels for image(s) {bad} (seeds "
                f"{[job.seeds[i] for i in bad]}): they are not returned. With float16 this is "
                "the known SDXL VAE overflow; use dtype='bfloat16' or 'float32', or a VAE fixed "
                "for float16 (e.g. madebyollin/sdxl-vae-fp16-fix)."
            )
        flagged = [bool(f) for f in (getattr(output, "nsfw_content_detected", None) or [])]
        kept = [i for i in range(arrays.shape[0]) if not (flagged and flagged[i])]
        if not kept:
            raise InvalidOutputError(
                "The model's safety checker blanked every image; none is returned. Rephrase "
                "the prompt or use other seeds."
            )
        if len(kept) < arrays.shape[0]:
            warnings.append(
                "The model's safety checker blanked the image(s) of seed(s) "
                f"{[s for i, s in enumerate(job.seeds) if i not in kept]}; they are left out."
            )
            arrays = arrays[kept]
        black = [i for i in range(arrays.shape[0]) if float(arrays[i].max()) <= 0.0]
        if black:
            raise InvalidOutputError(
                f"The model produced all-black image(s) {black}; they are not returned. Try "
                "dtype='float32' or another seed."
            )
        images = VaeImageProcessor.numpy_to_pil(arrays)
        scheduler_name = type(pipe.scheduler).__name__
        return BackendOutput(
            images=images,
            seeds=[job.seeds[i] for i in kept],
            request=resolved,
            mode=mode,
            width=width,
            height=height,
            denoising_steps=int(getattr(pipe, "num_timesteps", steps_run)),
            scheduler=scheduler_name,
            control_seconds=conditioned - start,
            encode_seconds=encoded - conditioned,
            denoise_seconds=marks["last_step"] - encoded,
            decode_seconds=finished - marks["last_step"],
            warnings=warnings + inputs.warnings,
            controls=inputs.controls,
            control_images=inputs.control_images,
            loras=used,
            scheduler_settings=dict(self._scheduler_settings),
        )

    def _check_memory(
        self, pipe: Any, *, mode: Mode, width: int, height: int, do_cfg: bool, job: Job
    ) -> None:
        """Refuse a request whose estimated working memory is over what the device has free
        (`deskgen.backends._request_memory`), before any step runs."""
        images = len(job.seeds)
        element = self._torch_dtype.itemsize
        estimate = estimate_request_memory(
            pipe,
            denoiser=self.denoiser,
            width=width,
            height=height,
            images=images,
            guidance_branches=2 if do_cfg else 1,
            img2img=mode == "img2img",
            element_bytes=element,
            # SDXL pipelines upcast a float16 force_upcast VAE to float32 for the decode
            vae_element_bytes=4 if self._upcasts_vae else element,
        )
        check_request_fits(
            estimate,
            device=self._device,
            width=width,
            height=height,
            images=images,
            multiple=self.vae_scale_factor * 8,
            tiling_on=self.opts.vae_tiling,
        )

    def _after_request(self) -> None:
        """Runs after every request, finished or not, still under the request lock."""
        # a request that stopped early (cancel, error) may leave its component on the GPU:
        # with model offload, put everything back before the next request
        if self.offload == "model" and self._txt2img is not None:
            self._txt2img.maybe_free_model_hooks()

    def _mode(self, job: Job, strength: float) -> Mode:
        """txt2img without a photo, img2img with one."""
        return "img2img" if job.photo is not None else "txt2img"

    def _size_reference(self, job: Job) -> tuple[Image.Image | None, str]:
        """The image whose aspect ratio the output takes when no size is given, and its name
        for warnings."""
        return job.photo, "photo"

    def _image_inputs(
        self, job: Job, *, mode: Mode, width: int, height: int, strength: float
    ) -> ImageInputs:
        """The pipeline's image arguments for ``mode`` (init image, size, controls)."""
        if mode == "img2img":
            assert job.photo is not None
            image = prepare_image(job.photo, (width, height))
            return ImageInputs(call={"image": image, "strength": strength})
        return ImageInputs(call={"width": width, "height": height})

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._adapters = None
        self._txt2img = None
        self._img2img = None
        free_accelerator_memory(self._device)
