"""`DiffusersBackend`: a diffusers pipeline behind deskgen's `Backend` interface.

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
  as black images (`._outputs`).

Nothing else changes the numbers: the same arguments and seed give the same pixels as a
hand-written diffusers call.
"""

from __future__ import annotations

import abc
import contextlib
import inspect
import math
import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar

from ..._device import free_accelerator_memory, resolve_device, resolve_dtype
from ..._exceptions import (
    BackendError,
    ConfigError,
    DeskgenError,
    InvalidRequestError,
    UnsupportedOperationError,
)
from ..._images import prepare_image
from ...prompts import PromptPlan, TextEncoderSpec
from .._base import BackendOptions, BackendOutput, Job
from .._profile import BackendProfile
from .._request_memory import HINT as OOM_HINT
from .._request_memory import (
    check_request_fits,
    estimate_request_memory,
    is_out_of_memory,
    out_of_memory_error,
)
from ._options import DiffusersOptions, ImageInputs, denoising_steps
from ._outputs import checked_images, plan_size
from ._quantized import QuantizingBackend
from ._speed import SPEED_OPTIONS, Recipe, preset_recipe

if TYPE_CHECKING:
    from PIL import Image

    from ..._models import GenerationRequest, Mode
    from ._adapters import LoraAdapters

__all__ = ["DiffusersBackend"]


class DiffusersBackend(QuantizingBackend):
    """Base of the diffusers backends; subclasses set the class names and their profile."""

    extra: ClassVar[str] = "local"
    requirements: ClassVar[tuple[str, ...]] = ("torch", "diffusers", "transformers", "accelerate")
    options_class: ClassVar[type[BackendOptions]] = DiffusersOptions
    profile: ClassVar[BackendProfile] = BackendProfile(
        modes=("txt2img", "img2img"),
        loras=True,
        quantizable=("unet", "text_encoder", "text_encoder_2", "vae"),
        default_quantized=("unet",),
        saves_quantized=True,
        presets=("quality", "balanced", "fast"),
    )
    default_guidance: ClassVar[float]
    default_strength: ClassVar[float] = 0.6
    """img2img strength when the request leaves it ``None``."""
    inpaint_class: ClassVar[str | None] = None
    """The diffusers pipeline masked requests run, built over the loaded modules (no weights
    copied); ``None``: the backend takes no mask. Its strength default is the pipeline's own."""
    default_steps: int = 30
    """Denoising steps when the request leaves them ``None`` (an instance attribute: some
    backends choose it from the loaded model)."""
    speed_options: ClassVar[frozenset[str]] = SPEED_OPTIONS
    """The speed options this backend takes (the others are refused when set)."""
    denoiser: ClassVar[str] = "unet"
    """The pipeline component that runs every step (what ``compile`` compiles)."""
    guidance_argument: ClassVar[str] = "guidance_scale"
    """The pipeline's call argument the request's ``guidance_scale`` goes to (Qwen-Image's
    classifier-free guidance is ``true_cfg_scale``)."""

    def __init__(self, options: BackendOptions) -> None:
        super().__init__(options)
        assert isinstance(options, DiffusersOptions)
        self.opts = options
        if not self.profile.loras and (options.loras or options.fuse_loras):
            from ..._registry import backends_with, either

            raise UnsupportedOperationError(
                f"The {self.name!r} backend does not take LoRAs yet: leave out loras=... (the "
                f"{either(backends_with('loras'), conjunction='and')} backends take them)."
            )
        self.quantized_components = {}
        self.quantization_configs = {}
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
            if self.img2img_class is not None and not self.inpainting_only
            else None
        )
        self._inpaint: Any = (
            self._construct(self._pipeline_class(self.inpaint_class), self._txt2img)
            if self.inpaint_class is not None
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
        if self.profile.loras:
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
        if options.preset is not None and options.preset not in self.profile.presets:
            if not self.profile.presets:
                raise UnsupportedOperationError(
                    f"The {self.name!r} backend takes no preset=...: {self._no_preset_hint()}"
                )
            raise UnsupportedOperationError(
                f"The {self.name!r} backend takes preset= {', '.join(self.profile.presets)}, "
                f"not {options.preset!r}."
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
        return self._preset_recipe(options)

    def _preset_recipe(self, options: DiffusersOptions) -> Recipe:
        """The recipe of ``options.preset`` here (`deskgen.backends.diffusers._speed`)."""
        assert options.preset is not None
        return preset_recipe(options.preset, kind=options.distill_kind, lora=options.distill_lora)

    def _no_preset_hint(self) -> str:
        """How to trade quality for speed on a backend without presets."""
        return "set steps= on requests instead."

    def _plan_size(
        self, request: GenerationRequest, photo: Image.Image | None, *, label: str = "photo"
    ) -> tuple[int, int, list[str]]:
        """Output size from the request and the aspect ratio of ``photo`` (`plan_size`)."""
        return plan_size(
            request,
            photo,
            multiple=self._size_multiple(),
            grid=self.vae_scale_factor * 8,
            native=(self.native_size, self.native_size),
            label=label,
        )

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
        import torch

        self._check_open()
        if job.mask is not None and self.inpaint_class is None:
            from ..._registry import backends_with, either

            raise UnsupportedOperationError(
                f"The {self.name!r} backend takes no mask (it has no inpainting pipeline): "
                f"leave out mask=..., or use {either(backends_with('masks'))} to change only "
                "the masked part."
            )
        if job.mask is None and self.inpainting_only:
            raise UnsupportedOperationError(
                f"{self.opts.model!r} is an inpainting checkpoint (its UNet takes the mask and "
                "the masked photo): it only redraws the masked part of a photo. Pass image=... "
                "with mask=... (or mask='auto'), or load the base model for txt2img and img2img."
            )
        request = job.request
        photo = job.photo
        strength = request.strength
        if strength is None:
            strength = self._inpaint_strength() if job.mask is not None else self.default_strength
        steps = request.steps if request.steps is not None else self.default_steps
        mode = self._mode(job, strength)
        steps_run = denoising_steps(steps, strength if mode in ("img2img", "inpaint") else None)
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
            request.guidance_scale
            if request.guidance_scale is not None
            else self._default_guidance(job)
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
                "strength": strength if photo is not None and mode != "edit" else request.strength,
                "loras": lora_weights,
                "lora_sha256": digests or None,
            }
        )
        template = {"img2img": self._img2img, "inpaint": self._inpaint}.get(mode, self._txt2img)
        if template is None:  # closed while this request was starting
            self._check_open()
        pipe = self._view(template)
        do_cfg = self._does_cfg(guidance, job)

        marks: dict[str, float] = {}

        def on_step_end(view: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            marks["last_step"] = time.perf_counter()
            # the scheduler's real count: PNDM/PLMS adds a step, second-order ones double them
            job.on_step(i + 1, int(getattr(view, "num_timesteps", steps_run)))
            return kwargs

        generators = [torch.Generator("cpu").manual_seed(seed) for seed in job.seeds]
        call: dict[str, Any] = {
            "num_inference_steps": steps,
            self.guidance_argument: guidance,
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
                        embeds = self.encode_prompt(pipe, job.prompt, do_cfg=do_cfg)
                    call.update(self._per_image(embeds, images=request.num_images))
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

        if call["output_type"] == "pil":  # padding_mask_crop: diffusers pastes back in PIL
            import numpy as np  # as output_type="np" gives them (numpy_to_pil undoes it exactly)

            output.images = np.stack([np.asarray(i, np.float32) / 255 for i in output.images])
        images, kept_seeds, dropped = checked_images(output, job.seeds)
        scheduler_name = type(pipe.scheduler).__name__
        return BackendOutput(
            images=images,
            seeds=kept_seeds,
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
            warnings=warnings + dropped + inputs.warnings,
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
            img2img=mode in ("img2img", "inpaint"),
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

    def _per_image(self, embeds: dict[str, Any], *, images: int) -> dict[str, Any]:
        """`encode_prompt`'s arguments for a call of ``images`` images: as they are where the
        pipeline repeats given embeddings per image itself (most do; FLUX's don't)."""
        return embeds

    def _default_guidance(self, job: Job) -> float:
        """The guidance of a request that leaves it ``None``."""
        return self.guidance_default

    def _does_cfg(self, guidance: float, job: Job) -> bool:
        """Whether the pipeline runs classifier-free guidance (two branches per step)."""
        return guidance > 1 and self._uses_cfg_embeds

    def _mode(self, job: Job, strength: float) -> Mode:
        """txt2img without a photo, img2img with one, inpaint with a mask."""
        if job.mask is not None:
            return "inpaint"
        return "img2img" if job.photo is not None else "txt2img"

    def _inpaint_strength(self) -> float:
        """The strength of a masked request that leaves it ``None``: the inpainting pipeline's
        own default (1.0 for SD, 0.9999 for SDXL: the masked part redrawn from noise)."""
        assert self.inpaint_class is not None
        call = self._pipeline_class(self.inpaint_class).__call__
        default = inspect.signature(call).parameters["strength"].default
        return float(default)

    def _size_reference(self, job: Job) -> tuple[Image.Image | None, str]:
        """The image whose aspect ratio the output takes when no size is given, and its name
        for warnings."""
        return job.photo, "photo"

    def _image_inputs(
        self, job: Job, *, mode: Mode, width: int, height: int, strength: float
    ) -> ImageInputs:
        """The pipeline's image arguments for ``mode`` (init image, mask, size, controls)."""
        if mode == "inpaint":
            call = self._inpaint_inputs(job, width=width, height=height)
            return ImageInputs(call={**call, "strength": strength})
        if mode == "img2img":
            assert job.photo is not None
            image = prepare_image(job.photo, (width, height))
            return ImageInputs(call={"image": image, "strength": strength})
        return ImageInputs(call={"width": width, "height": height})

    def _inpaint_inputs(self, job: Job, *, width: int, height: int) -> dict[str, Any]:
        """The photo and mask at the output size (the same crop), with ``padding_mask_crop``
        where the request sets it, for the inpainting pipeline."""
        assert job.photo is not None and job.mask is not None
        call: dict[str, Any] = {
            "image": prepare_image(job.photo, (width, height)),
            "mask_image": prepare_image(job.mask, (width, height)),
            "width": width,
            "height": height,
        }
        crop = job.request.padding_mask_crop
        if crop is not None:
            assert self.inpaint_class is not None
            call_signature = inspect.signature(self._pipeline_class(self.inpaint_class).__call__)
            if "padding_mask_crop" not in call_signature.parameters:
                raise UnsupportedOperationError(
                    f"The {self.name!r} backend's inpainting pipeline ({self.inpaint_class}) "
                    "redraws the whole picture: leave out padding_mask_crop."
                )
            call["padding_mask_crop"] = crop
            # diffusers pastes the redrawn box back over the photo as PIL images only
            call["output_type"] = "pil"
        return call

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._adapters = None
        self._txt2img = None
        self._img2img = None
        self._inpaint = None
        free_accelerator_memory(self._device)
