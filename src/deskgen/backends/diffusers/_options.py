"""The diffusers backends' loading options, and what a backend's image inputs add to a call."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from ..._lora import LoraSpec, as_lora_spec
from ...quant._config import QuantConfig
from .._base import BackendOptions
from ._speed import CompileMode, DistillKind, Preset

if TYPE_CHECKING:
    from PIL import Image

    from ..._controls import Control

__all__ = ["MAX_ASPECT", "MAX_SIDE", "DiffusersOptions", "ImageInputs", "denoising_steps"]

MAX_ASPECT = 4.0
"""Photos more elongated than 4:1 are centre-cropped to 4:1 before sizing."""
MAX_SIDE = 8192


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
    config: str | None = None
    """For a single-file checkpoint (``model=`` one ``.safetensors`` file in the original
    layout, backends whose profile has ``single_file``): a local diffusers pipeline folder whose
    ``model_index.json`` and component configs and tokenizers describe it (its weights, if any,
    are not read). ``None``: the configs deskgen ships for the family read from the file (SD
    1.5, SD 2.1 768 v-prediction, SDXL base 1.0)."""
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


def denoising_steps(steps: int, strength: float | None) -> int:
    """Steps diffusers runs: all of them for txt2img, ``int(steps * strength)`` for img2img."""
    if strength is None:
        return steps
    return min(int(steps * strength), steps)
