"""The diffusers backends: one module per pipeline family, and what they share.

- `._load`: the model index checked against the family, the pipeline loaded (safetensors
  only unless ``allow_pickle``), placed, offloaded, viewed per request;
- `._quantized`: components quantized as they load, in place, or read back saved quantized;
- `._pipeline`: `DiffusersBackend`, a request run through the pipeline;
- `._outputs`: output sizes and the checks images pass before they are returned;
- `._speed` (presets, compile, fused projections), `._chunked` (CLIP prompts over 77 tokens),
  `._adapters` (LoRAs), `._control_images` (canny and depth maps);
- the families: `.sd`, `.sdxl`, `.sdxl_controlnet`, `.hidream`, `.qwen_image_edit`, each one
  module that declares what it is (`deskgen.backends.BackendProfile`) beside its code.
"""

from __future__ import annotations

from ._options import DiffusersOptions, ImageInputs, denoising_steps
from ._pipeline import DiffusersBackend

__all__ = ["DiffusersBackend", "DiffusersOptions", "ImageInputs", "denoising_steps"]
