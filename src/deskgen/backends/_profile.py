"""What a backend is, declared as data beside its code (timm's ``default_cfgs``, pydantic-ai's
``ModelProfile``).

Each backend class sets ``profile = BackendProfile(...)``; the facade's refusals and hints, the
memory planner, the saved-quantization allow-list, the command line's choices, the bench and
the docs read it instead of naming backends:

```python
class MyBackend(DiffusersBackend):
    profile = BackendProfile(
        modes=("txt2img", "img2img"),
        loras=True,
        quantizable=("unet", "text_encoder"),
        memory=MemoryProfile(parameters={"unet": 2_567_463_684, ...}, work_bytes=4 * GiB),
    )
```

`deskgen._registry.backends_with` lists the backends that have a capability, and
`deskgen._registry.capability_hint` words "use 'sd', 'sdxl' or 'sdxl-controlnet'" from it.
This module imports nothing but the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["BackendProfile", "Capability", "GiB", "MemoryProfile", "ProfileMode"]

GiB = 2**30

ProfileMode = Literal["txt2img", "img2img", "edit", "controlnet", "inpaint"]
"""What a backend runs: text to image, a photo re-noised (img2img), a photo edited by an
instruction (the room kept), generation steered by control images of the photo, or only the
masked part of a photo redrawn (inpaint)."""

Capability = Literal[
    "loras",
    "control_images",
    "masks",
    "references",
    "true_cfg",
    "quantization",
    "saves_quantized",
    "presets",
    "describes",
    "photos",
    "planner",
    "demo",
    "gguf",
    "single_file",
]
"""The names `deskgen._registry.backends_with` takes."""


@dataclass(frozen=True)
class MemoryProfile:
    """What the memory planner knows of a backend's models without their files."""

    parameters: Mapping[str, int]
    """Published parameter counts of the default model's components."""
    work_bytes: int
    """Working memory of one image at the native size in half precision (activations and the
    VAE decode), a published-figure estimate."""
    published_models: tuple[str, ...] = ()
    """Hub ids with these components (besides the default model), e.g. a distilled sibling."""
    added_components: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    """Components loaded from an option, by name: ``(option, parameters of one)`` (the
    ControlNets of ``controlnet=``); local folders given there are sized by their files."""


@dataclass(frozen=True)
class BackendProfile:
    """A backend's capabilities. Everything defaults to "can't"."""

    modes: tuple[ProfileMode, ...] = ("txt2img",)
    loras: bool = False
    """``loras=`` at load and per request (`deskgen.LoraSpec`)."""
    control_images: bool = False
    """Requests may carry ``control_image``/``control_scale``."""
    masks: bool = False
    """Requests may carry ``mask=`` (white: change, black: keep)."""
    true_cfg: bool = False
    """Requests may carry ``true_cfg_scale`` (classifier-free guidance against the negative
    prompt besides ``guidance_scale``, the distilled guidance of FLUX-style models)."""
    references: int = 0
    """How many reference images a request may carry besides the photo (0: none)."""
    quantizable: tuple[str, ...] = ()
    """Components ``quantization=QuantConfig(...)`` may name (empty: not taken)."""
    default_quantized: tuple[str, ...] = ()
    """What ``QuantConfig(components=None)`` quantizes."""
    saves_quantized: bool = False
    """`deskgen.quant.save_quantized` saves its quantized pipelines."""
    presets: tuple[str, ...] = ()
    """The speed presets ``preset=`` takes (``quality``, ``balanced``, ``fast``)."""
    describes: bool = False
    """``describe(photo)`` works (a vision-language model or API)."""
    gguf: bool = False
    """The denoiser (``transformer`` or ``unet``) may be read from a GGUF file
    (``QuantConfig(method="gguf", file=...)``): its diffusers class has ``from_single_file``."""
    single_file: bool = False
    """``model=`` may be one ``.safetensors`` checkpoint in the original (civitai) layout, read
    with ``from_single_file`` and the configs deskgen ships or ``config=`` names."""
    memory: MemoryProfile | None = None
    """Published sizes for the memory planner; ``None``: nothing local to plan (APIs)."""
    demo: str | None = None
    """The `deskgen.testing.make_tiny_pipeline` kind ``deskgen demo`` runs it on offline."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """Extra lines for ``deskgen backends`` and the docs."""

    def has(self, capability: Capability) -> bool:
        """Whether the backend has ``capability`` (`Capability`)."""
        if capability == "quantization":
            return bool(self.quantizable)
        if capability == "references":
            return self.references > 0
        if capability == "presets":
            return bool(self.presets)
        if capability == "photos":
            return any(mode != "txt2img" for mode in self.modes)
        if capability == "planner":
            return self.memory is not None
        if capability == "demo":
            return self.demo is not None
        return bool(getattr(self, capability))
