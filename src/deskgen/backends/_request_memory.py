"""The working memory one request needs, estimated before it runs, and out-of-memory errors.

A request's size decides its memory far more than the weights do at large sizes: the VAE decodes
every image at full resolution with 128-256 channels per pixel, so an 8192x8192 request asks for
hundreds of GiB and, on a CPU, is killed by the operating system without a Python error. The
diffusers backends call `check_request_fits` before the pipeline runs, with the estimate built
from the loaded components' own configs:

- the VAE decoder at full resolution: ``3 (C0 + C1)`` elements per pixel per image (``C0``,
  ``C1``: the VAE's first two ``block_out_channels``: the last up block and the upsampled input
  to it); tiled (``vae_tiling=True``), one tile at a time; sliced, one image at a time;
- the VAE encoder of an img2img photo: ``6 C0`` elements per pixel per image;
- the denoiser per image and guidance branch: a UNet ``24 * sum(C_l / 4**l)`` elements per latent
  pixel over its levels, a transformer ``32 * inner_dim`` per token;
- the output arrays (float32 RGB, then 8-bit) and a fixed 256 MiB for everything else.

The factors were measured on SD 1.5's real VAE and UNet (random weights, float32, CPU; see
``benchmarks/request_memory.py``, which checks that each estimate covers the measured peak). The
phases run one after another, so the need is the largest of them plus the outputs. A request
whose estimate is over 90% of the memory free now is refused with `OutOfMemoryError`, naming the
largest size that fits at its aspect ratio and VAE tiling where it would help.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

from .._device import available_bytes
from .._exceptions import OutOfMemoryError

__all__ = [
    "HINT",
    "RequestMemory",
    "available_bytes",
    "check_request_fits",
    "estimate_request_memory",
    "is_out_of_memory",
    "out_of_memory_error",
]

GiB = 2**30
VAE_DECODE_FACTOR = 3.0
VAE_ENCODE_FACTOR = 6.0
UNET_FACTOR = 24.0
TRANSFORMER_FACTOR = 32.0
FIXED_BYTES = 256 * 2**20
OUTPUT_BYTES_PER_PIXEL = 16  # float32 RGB arrays, then the 8-bit PIL images
HINT = "Generate fewer images at once, a smaller size, or use dtype='float16'/'bfloat16'"
"""What to change after an allocation failed while generating."""
HEADROOM = 0.9
"""Share of the free memory a request may plan to use."""


@dataclass(frozen=True)
class RequestMemory:
    """Estimated bytes of each phase of one request."""

    denoise: int
    vae_encode: int
    vae_decode: int
    outputs: int
    decode_tiled: int
    """What the decode would need with VAE tiling (equal to `vae_decode` when it is on)."""

    @property
    def peak(self) -> int:
        return max(self.denoise, self.vae_encode, self.vae_decode) + self.outputs + FIXED_BYTES

    @property
    def peak_tiled(self) -> int:
        return max(self.denoise, self.vae_encode, self.decode_tiled) + self.outputs + FIXED_BYTES


def _tile_side(vae: Any) -> int:
    for name in ("tile_sample_min_size", "tile_sample_min_height"):
        value = getattr(vae, name, None)
        if isinstance(value, int) and value > 0:
            return value
    size = getattr(vae.config, "sample_size", None) or 512
    return int(size[0] if isinstance(size, (list, tuple)) else size)  # configs may give [h, w]


def _denoiser_elements_per_pixel(denoiser: Any, latent_scale: int) -> float:
    """Working elements per output pixel of one image and guidance branch."""
    config = denoiser.config
    per_latent_pixel = 1.0 / (latent_scale * latent_scale)
    channels = getattr(config, "block_out_channels", None)
    if channels:  # a UNet: resolution quarters at each level
        levels: float = sum(float(c) / 4**i for i, c in enumerate(channels))
        return UNET_FACTOR * levels * per_latent_pixel
    heads = getattr(config, "num_attention_heads", None)
    head_dim = getattr(config, "attention_head_dim", None)
    inner = (
        heads * head_dim if isinstance(heads, int) and isinstance(head_dim, int) else 3072
    )  # unknown layouts: a large transformer's width
    patch = int(getattr(config, "patch_size", 2) or 2)
    return TRANSFORMER_FACTOR * inner * per_latent_pixel / (patch * patch)


def estimate_request_memory(
    pipe: Any,
    *,
    denoiser: str,
    width: int,
    height: int,
    images: int,
    guidance_branches: int,
    img2img: bool,
    element_bytes: int,
    vae_element_bytes: int,
) -> RequestMemory:
    """The working memory of one request on a loaded diffusers pipeline (see the module)."""
    pixels = width * height
    vae = pipe.vae
    channels = list(getattr(vae.config, "block_out_channels", None) or [128, 256])
    c0, c1 = channels[0], channels[1] if len(channels) > 1 else channels[0]
    decode_per_pixel = VAE_DECODE_FACTOR * (c0 + c1) * vae_element_bytes
    sliced = bool(getattr(vae, "use_slicing", False))
    vae_images = 1 if sliced else images
    tiling = bool(getattr(vae, "use_tiling", False))
    tile = _tile_side(vae)
    tiled = min(width, tile) * min(height, tile) * decode_per_pixel * vae_images
    tiled += pixels * 3 * vae_element_bytes * 2 * vae_images  # the stitched result and its rows
    decode = tiled if tiling else pixels * decode_per_pixel * vae_images
    encode = 0
    if img2img:
        encoded_pixels = min(pixels, tile * tile) if tiling else pixels
        encode = int(VAE_ENCODE_FACTOR * c0 * vae_element_bytes * encoded_pixels * vae_images)
    model = getattr(pipe, denoiser, None)
    latent_scale = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    denoise = 0
    if model is not None:
        per_pixel = _denoiser_elements_per_pixel(model, latent_scale)
        denoise = int(per_pixel * pixels * images * guidance_branches * element_bytes)
    return RequestMemory(
        denoise=denoise,
        vae_encode=encode,
        vae_decode=int(decode),
        outputs=pixels * images * OUTPUT_BYTES_PER_PIXEL,
        decode_tiled=int(tiled),
    )


def _largest_fitting(
    width: int, height: int, need: int, room: float, multiple: int
) -> tuple[int, int] | None:
    """The largest size at ``width:height`` whose pixel-proportional part fits ``room``."""
    variable = need - FIXED_BYTES
    budget = room - FIXED_BYTES
    if variable <= 0 or budget <= 0:
        return None
    scale = math.sqrt(budget / variable)
    w = int(width * scale) // multiple * multiple
    h = int(height * scale) // multiple * multiple
    return (w, h) if w >= multiple and h >= multiple else None


def check_request_fits(
    estimate: RequestMemory,
    *,
    device: str,
    width: int,
    height: int,
    images: int,
    multiple: int,
    tiling_on: bool,
) -> None:
    """Refuse a request whose estimate is over `HEADROOM` of the memory available now.

    Raises:
        OutOfMemoryError: with the estimate, the memory available, the largest size that fits
            (at the request's aspect ratio and image count) and VAE tiling where it would fit.
    """
    available = available_bytes(device)
    if available is None or estimate.peak <= HEADROOM * available:
        return
    room = HEADROOM * available
    largest = _largest_fitting(width, height, estimate.peak, room, multiple)
    hints = []
    if largest is not None:
        hints.append(
            f"the largest size that fits is about {largest[0]}x{largest[1]} "
            f"({images} image{'s' if images > 1 else ''} at once)"
        )
    else:
        hints.append("even a small size does not fit now: free memory first")
    if images > 1:
        hints.append(
            "generate fewer images at once (num_images), or decode them one at a time with "
            "vae_slicing=True"
        )
    if not tiling_on and estimate.peak_tiled <= room:
        hints.append(
            "or turn on VAE tiling, which decodes in tiles: "
            "DeskGenerator(..., vae_tiling=True) (`--option vae_tiling=true`)"
        )
    raise OutOfMemoryError(
        f"A {width}x{height} request for {images} image{'s' if images > 1 else ''} needs about "
        f"{estimate.peak / GiB:.1f} GiB of working memory on {device} (the VAE decode alone "
        f"{estimate.vae_decode / GiB:.1f} GiB), but {available / GiB:.1f} GiB is available: "
        f"{'; '.join(hints)}.",
        needed_bytes=estimate.peak,
        available_bytes=available,
        largest_size=largest,
    )


_CPU_ALLOCATION_FAILURES = (
    "can't allocate memory",  # c10's DefaultCPUAllocator
    "not enough memory",  # its Windows wording
    "cannot allocate memory",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: torch's ``OutOfMemoryError`` (CUDA, MPS, XPU),
    the CPU allocator's ``RuntimeError``, or Python's ``MemoryError``."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")  # not imported: the error can't be one of torch's
    if torch is None:
        return False
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(
        text in str(exc) for text in _CPU_ALLOCATION_FAILURES
    )


def out_of_memory_error(
    exc: BaseException, *, device: str, what: str, hint: str
) -> OutOfMemoryError:
    """deskgen's error for an allocation failure while ``what`` ran (the caller chains it)."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return OutOfMemoryError(
        f"Out of memory on {device} {what} ({first_line[:200]}). {hint}",
        needed_bytes=None,
        available_bytes=available_bytes(device),
        largest_size=None,
    )
