"""The sizes a diffusers pipeline is called with, and the checks its outputs pass before any
image is returned: NaN/inf pixels (float16 overflow), the safety checker's blanks, all-black
images. ``output_type="np"`` keeps NaNs visible until here; ``numpy_to_pil`` is then the same
conversion diffusers' ``"pil"`` does."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..._exceptions import InvalidOutputError, InvalidRequestError
from ..._images import fit_size
from ._options import MAX_ASPECT, MAX_SIDE

if TYPE_CHECKING:
    from PIL import Image

    from ..._models import GenerationRequest

__all__ = ["checked_images", "plan_size"]


def plan_size(
    request: GenerationRequest,
    photo: Image.Image | None,
    *,
    multiple: int,
    grid: int,
    native: tuple[int, int],
    label: str = "photo",
) -> tuple[int, int, list[str]]:
    """Output size from the request and the aspect ratio of ``photo`` (the image named
    ``label`` in warnings), with warnings for crops: a given side must be a ``multiple``;
    sizes from the photo's aspect keep ``native``'s area on a ``grid``."""
    required = multiple
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


def checked_images(output: Any, seeds: list[int]) -> tuple[list[Image.Image], list[int], list[str]]:
    """The images of a pipeline ``output`` (``output_type="np"``) that may be returned, their
    seeds, and warnings for the ones left out.

    Raises:
        InvalidOutputError: NaN/inf or all-black pixels, or every image blanked.
    """
    import numpy as np
    from diffusers.image_processor import VaeImageProcessor

    warnings: list[str] = []
    arrays = np.asarray(output.images)
    bad = [i for i in range(arrays.shape[0]) if not np.isfinite(arrays[i]).all()]
    if bad:
        raise InvalidOutputError(
            f"The model produced NaN/inf pixels for image(s) {bad} (seeds "
            f"{[seeds[i] for i in bad]}): they are not returned. With float16 this is "
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
            f"{[s for i, s in enumerate(seeds) if i not in kept]}; they are left out."
        )
        arrays = arrays[kept]
    black = [i for i in range(arrays.shape[0]) if float(arrays[i].max()) <= 0.0]
    if black:
        raise InvalidOutputError(
            f"The model produced all-black image(s) {black}; they are not returned. Try "
            "dtype='float32' or another seed."
        )
    kept_seeds = [seeds[i] for i in kept]
    return VaeImageProcessor.numpy_to_pil(arrays), kept_seeds, warnings
