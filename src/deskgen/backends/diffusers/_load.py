"""Loading a diffusers pipeline: the model index checked against the backend's family, the
pipeline read with safetensors only (unless the caller opts in), placed on its device,
offloaded, and viewed per request. Quantized loading builds on it (`._quantized`); single-file
checkpoints load through `._single_file`."""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
from collections.abc import Iterator
from types import EllipsisType
from typing import TYPE_CHECKING, Any, ClassVar

from ..._device import dtype_name
from ..._exceptions import (
    ConfigError,
    DeskgenError,
    GeneratorClosedError,
    ModelLoadError,
    ModelMismatchError,
    UnsupportedOperationError,
)
from ..._hub import is_local
from ..._loading import (
    map_load_errors,
    missing_hub_message,
    read_model_index,
    use_safetensors,
    weights_source,
)
from .._base import Backend
from ._options import DiffusersOptions
from ._single_file import is_single_file, load_single_file

if TYPE_CHECKING:
    from ...quant._config import QuantConfig
    from ._adapters import LoraAdapters

__all__ = ["LoadingBackend"]


class LoadingBackend(Backend):
    """The loading half of `DiffusersBackend` (subclasses set the class names)."""

    txt2img_class: ClassVar[str]
    img2img_class: ClassVar[str | None]
    """``None``: the model has no image input (photos are refused)."""
    inpaint_class: ClassVar[str | None]
    """The inpainting pipeline; ``None``: the backend takes no mask (nor inpainting models)."""
    accepted_pipelines: ClassVar[frozenset[str]]
    family: ClassVar[str]
    """Human name of the model family, for messages."""

    opts: DiffusersOptions
    offload: str
    vae_scale_factor: int
    _device: str
    _torch_dtype: Any
    _txt2img: Any
    _img2img: Any
    _closed: bool
    _adapters: LoraAdapters | None
    _encode_lock: threading.Lock

    def _pipeline_class(self, name: str) -> Any:
        import diffusers

        return getattr(diffusers, name)

    def _load_class(self, index: dict[str, Any]) -> str:
        """The pipeline class to load the model with (checked against the family already):
        the inpainting pipeline for a model saved as one, else the text-to-image one."""
        if self.inpaint_class is not None and index.get("_class_name") == self.inpaint_class:
            return self.inpaint_class
        return self.txt2img_class

    @property
    def inpainting_only(self) -> bool:
        """Whether the loaded model is an inpainting checkpoint: its UNet takes the mask and
        the masked photo besides the latents (9 input channels), so it only redraws masked
        parts of photos (`_for_unet`)."""
        return _inpainting_unet(self._txt2img)

    def _for_unet(self, pipe: Any, model: str) -> Any:
        """The loaded pipeline as the class its UNet calls for: an inpainting UNet only ever
        runs in the inpainting pipeline (no text-to-image or img2img pipeline is built over
        it), a base UNet saved as an inpainting pipeline runs in the text-to-image one."""
        name = type(pipe).__name__
        if _inpainting_unet(pipe):
            if self.inpaint_class is None:
                raise ModelMismatchError(
                    f"{model!r} is an inpainting checkpoint (its UNet takes the mask and the "
                    f"masked photo: 9 input channels), but the {self.name!r} backend has no "
                    "inpainting pipeline. Load the base model it was made from."
                )
            if name != self.inpaint_class:
                return self._construct(self._pipeline_class(self.inpaint_class), pipe)
        elif name == self.inpaint_class and name != self.txt2img_class:
            return self._construct(self._pipeline_class(self.txt2img_class), pipe)
        return pipe

    def _read_model_index(self, model: str, local: bool) -> dict[str, Any]:
        return read_model_index(
            model,
            local=local,
            example=self.default_model,
            revision=self.opts.revision,
            cache_dir=self.opts.cache_dir,
            local_files_only=self.opts.local_files_only,
        )

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
            from ..._registry import backends_for_pipeline

            # the backends that declare it (img2img and other classes of a family count too)
            owners = [name for name in backends_for_pipeline(class_name) if name != self.name]
            if not owners and class_name:
                stem = class_name.replace("Img2Img", "").replace("Inpaint", "")
                owners = [name for name in backends_for_pipeline(stem) if name != self.name]
            hint = f" Use DeskGenerator({owners[0]!r}, model=...) for it." if owners else ""
            accepted = ", ".join(sorted(self.accepted_pipelines))
            raise ModelMismatchError(
                f"{model!r} is a {class_name or 'non-diffusers'} model, but the {self.name!r} "
                f"backend loads {self.family} weights ({accepted}).{hint}"
            )

    def _load(self) -> Any:
        model = self.opts.model
        single = is_single_file(model)
        pipe = self._load_single_file(model) if single else self._load_folder(model)
        pipe = self._for_unet(pipe, model)
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

    def _load_single_file(self, model: str) -> Any:
        """One checkpoint file in the original layout (`._single_file`), for backends whose
        profile has ``single_file``."""
        if not self.profile.single_file:
            from ..._registry import backends_with, either

            raise ModelLoadError(
                f"{model!r} is a single-file checkpoint, which the {self.name!r} backend does "
                f"not load: pass a diffusers pipeline folder or hub id (the "
                f"{either(backends_with('single_file'), conjunction='and')} backends read "
                "single files)."
            )
        return load_single_file(self, model)

    def _load_folder(self, model: str) -> Any:
        """A diffusers pipeline folder or hub id (``from_pretrained``)."""
        if self.opts.config is not None:
            raise ConfigError(
                f"config= describes a single-file checkpoint, but {model!r} is a diffusers "
                "folder or hub id with its own configs: leave config= out."
            )
        local = is_local(model)
        index = self._read_model_index(model, local)
        self._check_family(index, model)
        cls = self._pipeline_class(self._load_class(index))
        source = os.path.expanduser(model) if local else model
        extra: dict[str, Any] = {}
        if self.opts.vae is not None:
            extra["vae"] = self._load_vae(self.opts.vae)
        extra.update(self._extra_components(source, index))
        if local:
            self._load_saved_quantized(index, source, extra)
        self._quantize_at_load(index, source, local, extra)
        with self._translating_load_errors(model, local=local):
            return cls.from_pretrained(source, **extra, **self._load_kwargs())

    def _load_kwargs(self) -> dict[str, Any]:
        """What every ``from_pretrained`` of the model's own files takes from the options."""
        return {
            "dtype": self._torch_dtype,
            "use_safetensors": use_safetensors(self.opts.allow_pickle),
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

        from ...quant import module_bytes

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

    def _load_saved_quantized(
        self, index: dict[str, Any], source: str, extra: dict[str, Any]
    ) -> None:
        """Add the components a folder holds quantized to ``extra`` (`._quantized`)."""

    def _quantize_at_load(
        self, index: dict[str, Any], source: str, local: bool, extra: dict[str, Any]
    ) -> None:
        """Load, quantize and add to ``extra`` the components to quantize (`._quantized`)."""

    def _quantize_component(self, name: str, module: Any, config: QuantConfig) -> None:
        """Quantize one loaded component in place (`._quantized`)."""
        raise UnsupportedOperationError(f"The {self.name!r} backend does not quantize.")

    @contextlib.contextmanager
    def _translating_load_errors(
        self, model: str, *, local: bool, variant: str | EllipsisType | None = ...
    ) -> Iterator[None]:
        """`deskgen.backends._loading.map_load_errors` with this backend's options
        (``variant``: the one asked for, by default the option's)."""
        variant = self.opts.variant if isinstance(variant, EllipsisType) else variant
        with map_load_errors(
            model, local=local, variant=variant, offline=self.opts.local_files_only
        ):
            yield

    def _load_vae(self, name: str) -> Any:
        from diffusers import AutoencoderKL

        local, source = weights_source(
            name,
            what="VAE",
            hint="pass a folder saved with AutoencoderKL.save_pretrained() or a hub id such as "
            "madebyollin/sdxl-vae-fp16-fix.",
        )
        with map_load_errors(
            name,
            local=local,
            what="the VAE",
            offline=self.opts.local_files_only,
            remote_missing=True,
        ):
            return AutoencoderKL.from_pretrained(
                source,
                dtype=self._torch_dtype,
                use_safetensors=use_safetensors(self.opts.allow_pickle),
                cache_dir=self.opts.cache_dir,
                local_files_only=self.opts.local_files_only,
            )

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
        from ...quant import module_bytes

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


def _inpainting_unet(pipe: Any) -> bool:
    """Whether ``pipe``'s UNet is an inpainting one (latents, mask and masked-image latents:
    9 input channels, as SD 1.5's and SDXL's inpainting checkpoints)."""
    unet = getattr(pipe, "unet", None)
    return getattr(getattr(unet, "config", None), "in_channels", None) == 9
