"""``sdxl-controlnet``: SDXL with one or more ControlNets that keep the desk photo's structure.

```python
DeskGenerator("sdxl-controlnet", control="canny")                  # edges of the photo
DeskGenerator("sdxl-controlnet", control=["canny", "depth"])       # both, each with its net
DeskGenerator("sdxl-controlnet", controlnet="my/sdxl-tile", control="image")
```

How a request runs (diffusers' own pipelines, chosen per request):

- photo and ``strength < 1``: ``StableDiffusionXLControlNetImg2ImgPipeline``, the photo as the
  init image *and* the source of the controls: colours and light survive as far as
  ``strength`` allows, structure is held by the ControlNets (default strength 0.8);
- photo and ``strength=1.0``: ``StableDiffusionXLControlNetPipeline``, the photo only as the
  source of the controls, the picture starts from noise (the seed's "SDXL + ControlNet", and
  RoomGPT's approach): a new desk in the same room layout;
- no photo: the same text-to-image pipeline with the request's own ``control_image``;
- photo and ``mask``: ``StableDiffusionXLControlNetInpaintPipeline``, only the masked part
  redrawn (default strength 0.9999, diffusers'), the controls computed from the whole photo as
  for img2img, so the new desk keeps the old one's edges or depth; the room is kept.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import field_validator, model_validator

from ..._controls import DEFAULT_DEPTH_MODEL, Control, ControlKind
from ..._exceptions import (
    GeneratorClosedError,
    InvalidRequestError,
    ModelLoadError,
    ModelMismatchError,
    ModelNotFoundError,
)
from ..._hub import is_local as _is_local
from ..._images import prepare_image
from ..._loading import MISSING_SAFETENSORS, load_error
from ..._registry import register_backend
from .._base import BackendOptions, Job
from .._profile import BackendProfile, GiB, MemoryProfile
from ._options import DiffusersOptions, ImageInputs
from .sdxl import SDXL_PARAMETERS, SDXLBackend

if TYPE_CHECKING:
    from PIL import Image

    from ..._models import Mode

__all__ = ["ControlNetOptions", "SDXLControlNetBackend"]

_FAMILIES = {768: "Stable Diffusion 1.x", 1024: "Stable Diffusion 2.x", 2048: "SDXL"}
_FIT_KEYS = ("cross_attention_dim", "addition_embed_type", "in_channels", "block_out_channels")


def _split(value: Any) -> Any:
    """Text from the CLI's ``--option``: JSON (``[{"kind": "canny", "low_threshold": 150}]``)
    or a comma-separated list (``"canny,depth"`` -> ``["canny", "depth"]``); a tuple is a list
    (the options are strict: a tuple would not be one)."""
    if isinstance(value, tuple):
        return list(value)
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith(("[", "{")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{text[:40]!r} is not valid JSON ({exc})") from exc
    if "," in text:
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class ControlNetOptions(DiffusersOptions):
    """Loading options of ``sdxl-controlnet``: the SDXL options plus the ControlNets."""

    controlnet: str | list[str] | None = None
    """ControlNet hub id(s) or folder(s), one per control; ``None``: each control's own, or
    the default for its kind: ``diffusers/controlnet-canny-sdxl-1.0`` or
    ``diffusers/controlnet-depth-sdxl-1.0``."""
    control: ControlKind | Control | list[ControlKind | Control] = "canny"
    """What each ControlNet sees: ``"canny"``, ``"depth"``, ``"image"`` or a `Control` with its
    own scale, steps range and thresholds; a list for several ControlNets at once."""
    depth_model: str = DEFAULT_DEPTH_MODEL
    """The transformers depth-estimation model of ``depth`` controls (hub id or folder)."""

    @field_validator("controlnet", "control", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        return _split(value)

    @model_validator(mode="after")
    def _check_pairs(self) -> ControlNetOptions:
        self.resolved_controls()
        return self

    def resolved_controls(self) -> list[Control]:
        """One `Control` per ControlNet, each naming the ControlNet it loads."""
        raw = self.control if isinstance(self.control, list) else [self.control]
        if not raw:
            raise ValueError("control is an empty list: name at least one control")
        if self.controlnet is None:
            return [c if isinstance(c, Control) else Control(kind=c) for c in raw]
        nets = self.controlnet if isinstance(self.controlnet, list) else [self.controlnet]
        if len(nets) != len(raw):
            raise ValueError(
                f"{len(nets)} ControlNet(s) but {len(raw)} control(s): give one control "
                "per ControlNet, e.g. controlnet=[A, B], control=['canny', 'depth']"
            )
        resolved = []
        for net, control in zip(nets, raw, strict=True):
            if not isinstance(control, Control):
                resolved.append(Control(kind=control, controlnet=net))
                continue
            if control.controlnet not in (None, net):
                raise ValueError(
                    f"the {control.kind} control names ControlNet {control.controlnet!r} and "
                    f"controlnet= names {net!r}: name it in one place"
                )
            resolved.append(control.model_copy(update={"controlnet": net}))
        return resolved


def _family(cross_attention_dim: Any) -> str:
    if isinstance(cross_attention_dim, int):
        return _FAMILIES.get(cross_attention_dim, f"cross-attention width {cross_attention_dim}")
    return "an unknown family"


@register_backend("sdxl-controlnet")
class SDXLControlNetBackend(SDXLBackend):
    """SDXL base models with diffusers ControlNets (``StableDiffusionXLControlNetPipeline`` and
    its img2img and inpainting siblings); control images computed from the photo or given."""

    description: ClassVar[str] = (
        "SDXL + ControlNet (diffusers): keeps the photo's edges or depth, restyles the rest "
        "or inpaints only the masked desk"
    )
    extra: ClassVar[str] = "controlnet"
    options_class: ClassVar[type[BackendOptions]] = ControlNetOptions
    txt2img_class: ClassVar[str] = "StableDiffusionXLControlNetPipeline"
    img2img_class: ClassVar[str] = "StableDiffusionXLControlNetImg2ImgPipeline"
    inpaint_class: ClassVar[str | None] = "StableDiffusionXLControlNetInpaintPipeline"
    accepted_pipelines: ClassVar[frozenset[str]] = frozenset(
        {
            "StableDiffusionXLPipeline",
            "StableDiffusionXLImg2ImgPipeline",
            "StableDiffusionXLControlNetPipeline",
            "StableDiffusionXLControlNetImg2ImgPipeline",
            "StableDiffusionXLControlNetInpaintPipeline",
        }
    )
    default_negative_preset: ClassVar[str | None] = "controlnet_short"
    default_strength: ClassVar[float] = 0.8
    profile: ClassVar[BackendProfile] = BackendProfile(
        modes=("txt2img", "img2img", "controlnet", "inpaint"),
        masks=True,
        gguf=True,
        single_file=True,
        loras=True,
        control_images=True,
        quantizable=("unet", "text_encoder", "text_encoder_2", "vae", "controlnet"),
        default_quantized=("unet",),
        presets=("quality", "balanced", "fast"),
        memory=MemoryProfile(
            parameters=SDXL_PARAMETERS,
            work_bytes=5 * GiB,
            # an SDXL ControlNet (diffusers/controlnet-canny-sdxl-1.0)
            added_components={"controlnet": ("controlnet", 1_251_517_440)},
        ),
        demo="sdxl",
        notes=(
            "Inpainting (mask=...) runs StableDiffusionXLControlNetInpaintPipeline over the "
            "base model (default strength 0.9999), the controls made from the whole photo; "
            "inpainting checkpoints (9-channel UNets) don't fit SDXL ControlNets: load them "
            "with the 'sdxl' backend.",
        ),
    )

    def __init__(self, options: BackendOptions) -> None:
        assert isinstance(options, ControlNetOptions)
        self.controls: list[Control] = options.resolved_controls()
        self._depth: Any = None
        try:
            super().__init__(options)
        except BaseException:
            self._release_depth()  # loaded first: don't leave it on the GPU
            raise

    # -- loading -----------------------------------------------------------------------------

    def _extra_components(self, source: str, index: dict[str, Any]) -> dict[str, Any]:
        """Check everything the controls need before the base model's weights load: OpenCV
        for canny, the depth model for depth, the ControlNets' fit with the base UNet."""
        from ._control_images import DepthEstimator, require_opencv

        kinds = {control.kind for control in self.controls}
        if "canny" in kinds:
            require_opencv()
        unet_config = self._unet_config(source)
        configs = [self._controlnet_config(c.controlnet_id) for c in self.controls]
        for control, config in zip(self.controls, configs, strict=True):
            self._check_fit(control.controlnet_id, config, unet_config)
        if "depth" in kinds:
            assert isinstance(self.opts, ControlNetOptions)
            self._depth = DepthEstimator(
                self.opts.depth_model,
                device=self._device,
                dtype=self._torch_dtype,
                cache_dir=self.opts.cache_dir,
                local_files_only=self.opts.local_files_only,
                allow_pickle=self.opts.allow_pickle,
                missing_message=self._missing_hub_message,
            )
        loaded: dict[str, Any] = {}  # a ControlNet named twice (two canny controls) loads once
        for control in self.controls:
            if control.controlnet_id not in loaded:
                loaded[control.controlnet_id] = self._load_controlnet(control.controlnet_id)
        nets = [loaded[control.controlnet_id] for control in self.controls]
        return {"controlnet": nets[0] if len(nets) == 1 else nets}

    def _unet_config(self, source: str) -> dict[str, Any]:
        from diffusers import UNet2DConditionModel

        with self._translating_load_errors(self.opts.model, local=_is_local(self.opts.model)):
            config = UNet2DConditionModel.load_config(
                source,
                subfolder="unet",
                revision=self.opts.revision,
                cache_dir=self.opts.cache_dir,
                local_files_only=self.opts.local_files_only,
            )
        return dict(config)

    def _controlnet_config(self, name: str) -> dict[str, Any]:
        from diffusers import ControlNetModel

        local = _is_local(name)
        folder = os.path.expanduser(name)
        if local and not os.path.isfile(os.path.join(folder, "config.json")):
            if os.path.isfile(os.path.join(folder, "model_index.json")):
                raise ModelMismatchError(
                    f"{name!r} is a whole pipeline, not a ControlNet: pass the folder of its "
                    "ControlNet alone (with config.json)."
                )
            raise (ModelLoadError if os.path.exists(folder) else ModelNotFoundError)(
                f"No ControlNet folder with a config.json at {name!r}: pass a folder saved "
                "with ControlNetModel.save_pretrained() or a hub id such as "
                "diffusers/controlnet-canny-sdxl-1.0."
            )
        try:
            config = ControlNetModel.load_config(
                folder if local else name,
                cache_dir=self.opts.cache_dir,
                local_files_only=self.opts.local_files_only,
            )
        except (OSError, ValueError) as exc:
            raise load_error(
                name,
                exc,
                local=local,
                what="the ControlNet",
                offline=self.opts.local_files_only,
                remote_missing=True,
            ) from exc
        class_name = config.get("_class_name")
        if class_name != "ControlNetModel":
            raise ModelMismatchError(
                f"{name!r} is a {class_name or 'non-diffusers'} model, not a ControlNetModel: "
                "sdxl-controlnet loads plain SDXL ControlNets (union, XS and LoRA ControlNets "
                "are not supported), e.g. diffusers/controlnet-canny-sdxl-1.0."
            )
        return dict(config)

    def _check_fit(self, name: str, config: dict[str, Any], unet: dict[str, Any]) -> None:
        if unet.get("in_channels") == 9:
            raise ModelMismatchError(
                f"{self.opts.model!r} is an inpainting checkpoint (its UNet takes the mask and "
                "the masked photo: 9 input channels), which SDXL ControlNets don't fit. Use the "
                "base model with mask=... (sdxl-controlnet inpaints with it), or load the "
                "inpainting checkpoint with the 'sdxl' backend."
            )
        for key in _FIT_KEYS:
            mine, theirs = config.get(key), unet.get(key)
            if isinstance(mine, (list, tuple)) and isinstance(theirs, (list, tuple)):
                mine, theirs = list(mine), list(theirs)
            if mine != theirs:
                raise ModelMismatchError(
                    f"ControlNet {name!r} does not fit {self.opts.model!r}: its {key} is {mine} "
                    f"where the model's UNet has {theirs} (the ControlNet is for "
                    f"{_family(config.get('cross_attention_dim'))}, the model is "
                    f"{_family(unet.get('cross_attention_dim'))}). Use an SDXL ControlNet, e.g. "
                    "diffusers/controlnet-canny-sdxl-1.0 or diffusers/controlnet-depth-sdxl-1.0."
                )

    def _load_controlnet(self, name: str) -> Any:
        from diffusers import ControlNetModel

        local = _is_local(name)

        def load(variant: str | None) -> Any:
            return ControlNetModel.from_pretrained(
                os.path.expanduser(name) if local else name,
                dtype=self._torch_dtype,
                use_safetensors=None if self.opts.allow_pickle else True,
                variant=variant,
                cache_dir=self.opts.cache_dir,
                local_files_only=self.opts.local_files_only,
            )

        variant = self.opts.variant
        if variant is not None:
            try:
                return load(variant)
            except (OSError, ValueError) as exc:
                if not MISSING_SAFETENSORS.search(str(exc)):
                    with self._translating_load_errors(name, local=local):
                        raise
            # no weights of that variant (most community ControlNets have none): the plain
            # weights, cast to the dtype, as diffusers' pipeline loader does for components
        with self._translating_load_errors(name, local=local, variant=None):
            return load(None)

    # -- requests ----------------------------------------------------------------------------

    def _given(self, job: Job) -> list[Image.Image | None]:
        """The request's control images, one per control (``None``: compute it)."""
        given = job.control_images
        if given is None:
            return [None] * len(self.controls)
        if len(given) != len(self.controls):
            kinds = ", ".join(c.kind for c in self.controls)
            raise InvalidRequestError(
                f"control_image has {len(given)} image(s) but this generator has "
                f"{len(self.controls)} control(s) ({kinds}): give one per control, None where "
                "deskgen should compute it from the photo."
            )
        return list(given)

    def _mode(self, job: Job, strength: float) -> Mode:
        self._scales(job)  # a malformed request fails before any control image is computed
        given = self._given(job)
        if job.photo is None:
            pairs = zip(self.controls, given, strict=True)
            needed = [control.kind for control, image in pairs if image is None]
            if needed:
                raise InvalidRequestError(
                    f"The {', '.join(needed)} control is made from the desk photo: pass "
                    "image=... (or a ready control image per control in control_image=...)."
                )
            return "txt2img"
        if job.mask is not None:
            return "inpaint"
        return "img2img" if strength < 1.0 else "txt2img"

    def _size_reference(self, job: Job) -> tuple[Image.Image | None, str]:
        if job.photo is not None:
            return job.photo, "photo"
        given = next((image for image in self._given(job) if image is not None), None)
        return given, "control image"

    def _scales(self, job: Job) -> list[float]:
        wanted = job.request.control_scale
        if wanted is None:
            return [c.scale for c in self.controls]
        if not isinstance(wanted, list):
            return [float(wanted)] * len(self.controls)
        if len(wanted) != len(self.controls):
            raise InvalidRequestError(
                f"control_scale has {len(wanted)} value(s) for {len(self.controls)} control(s): "
                "give one scale, or one per control."
            )
        return [float(scale) for scale in wanted]

    def _image_inputs(
        self, job: Job, *, mode: Mode, width: int, height: int, strength: float
    ) -> ImageInputs:
        from ._control_images import canny_edges

        size = (width, height)
        photo = prepare_image(job.photo, size) if job.photo is not None else None
        warnings: list[str] = []
        images: list[Image.Image] = []
        all_given = self._given(job)
        reference = self._size_reference(job)[0]
        if photo is not None and mode == "txt2img" and all(g is not None for g in all_given):
            warnings.append(
                "The photo was not used: every control image was given and strength=1.0 "
                "starts from noise; it only set the output size. Leave out image=..., or use "
                "strength < 1 to start from it."
            )
        for i, (control, given) in enumerate(zip(self.controls, all_given, strict=True)):
            if given is not None:
                aspect = given.width / given.height
                # the size reference's own crop is reported by the size planning
                if given is not reference and abs(aspect - width / height) / aspect > 0.02:
                    warnings.append(
                        f"Control image {i} ({given.width}x{given.height}) was centre-cropped "
                        f"to the output's aspect ratio {width}x{height}."
                    )
                images.append(prepare_image(given, size))
                continue
            assert photo is not None  # _mode refused requests without one
            job.check_cancel()
            if control.kind == "canny":
                images.append(
                    canny_edges(
                        photo,
                        low_threshold=control.low_threshold,
                        high_threshold=control.high_threshold,
                    )
                )
            elif control.kind == "depth":
                depth = self._depth
                if depth is None:  # closed while this request was running
                    raise GeneratorClosedError(
                        "This generator was closed and its weights freed; create a new "
                        "DeskGenerator."
                    )
                images.append(depth(photo))
            else:
                images.append(photo)
        scales = self._scales(job)
        used = [
            c.model_copy(update={"scale": s, "controlnet": c.controlnet_id})
            for c, s in zip(self.controls, scales, strict=True)
        ]
        single = len(used) == 1

        def per_control(values: list[Any]) -> Any:
            # diffusers wants plain values for one ControlNet and lists for several
            return values[0] if single else values

        call: dict[str, Any] = {
            "controlnet_conditioning_scale": per_control(scales),
            "control_guidance_start": per_control([c.start for c in used]),
            "control_guidance_end": per_control([c.end for c in used]),
        }
        if mode == "inpaint":
            call.update(self._inpaint_inputs(job, width=width, height=height))
            call.update(control_image=per_control(images), strength=strength)
        elif mode == "img2img":
            call.update(image=photo, control_image=per_control(images), strength=strength)
        else:
            call.update(image=per_control(images), width=width, height=height)
        return ImageInputs(
            call=call,
            request_update={"control_scale": scales},
            warnings=warnings,
            controls=used,
            control_images=images,
        )

    def _release_depth(self) -> None:
        depth, self._depth = self._depth, None
        if depth is not None:
            depth.close()

    def close(self) -> None:
        self._release_depth()
        super().close()
