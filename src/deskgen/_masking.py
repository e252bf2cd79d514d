"""A request's mask, read or found before any backend sees it, and the room put back after.

- **Read or found.** A mask image is read as a photo (bomb limits, upright), made grey, and
  checked against the photo: the same size or aspect ratio, something white to change,
  something black to keep. ``mask="auto"`` or a `DeskMask` is found in the photo by a
  segmentation model (`deskgen.masks.find_desk_mask`, loaded once and shared); its digest is
  that of its pixels, so a replay can tell whether the same mask was found again.
- **The room put back.** With ``keep_unmasked`` (the default) every image is composited over
  the photo at the photo's own size: outside the mask the photo's pixels, byte for byte; the
  feathered edge is the only blend (`deskgen.masks.composite_unmasked`). A backend made its
  image from the photo centre-cropped to the generated aspect (`deskgen._images.prepare_image`),
  so the image is put back over that crop.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from ._exceptions import ImageInputError, InvalidRequestError
from ._images import ImageInfo, ImageInput, load_image

if TYPE_CHECKING:
    from PIL import Image

    from ._models import GenerationRequest

__all__ = ["MaskInputs", "keep_room", "mask_digest", "read_mask"]

_ASPECT_TOLERANCE = 0.01
"""A mask within 1% of the photo's aspect ratio is resized to it; beyond, it is refused."""


@dataclass
class MaskInputs:
    """A request's mask, ready for the backend (grey, the photo's size), and what it cost."""

    request: GenerationRequest
    mask: Image.Image | None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def mask_digest(mask: Image.Image) -> str:
    """The SHA-256 of a grey mask's pixels (and size): how a found mask is recorded."""
    header = f"{mask.mode} {mask.width}x{mask.height}\n".encode()
    return hashlib.sha256(header + mask.tobytes()).hexdigest()


def read_mask(
    req: GenerationRequest,
    photo: Image.Image | None,
    info: ImageInfo | None,
    *,
    device: str,
) -> MaskInputs:
    """Read ``req.mask`` or find ``req.desk_mask`` in ``photo``.

    Raises:
        InvalidRequestError: a mask without a photo, a recorded mask digest without the mask,
            a mask drawn for another photo than this one.
        ImageInputError: a mask that can't be read, of another aspect ratio than the photo,
            all black (nothing to change) or all white (nothing kept); nothing found.
    """
    if not req.masked:
        if req.mask_sha256 is not None:
            raise InvalidRequestError(
                "This request was made with an edit mask (mask_sha256 "
                f"{req.mask_sha256[:12]}...) but no mask was given: pass the same mask with "
                "mask=..., or set mask_sha256=None to change the whole photo."
            )
        return MaskInputs(request=req, mask=None)
    if photo is None:
        raise InvalidRequestError(
            "A mask marks what to change in a photo: pass image=... (the desk photo) too."
        )
    warnings: list[str] = []
    started = time.perf_counter()
    if req.desk_mask is not None:
        from .masks import find_desk_mask

        found = find_desk_mask(photo, settings=req.desk_mask, device=device)
        mask = found.mask
        digest = mask_digest(mask)
        if req.mask_sha256 not in (None, digest):
            warnings.append(
                "The mask found differs from the one this request was recorded with "
                "(another segmentation model, its weights, or another photo)."
            )
        req = req.model_copy(update={"desk_mask": found.settings, "mask_sha256": digest})
    else:
        given = cast("ImageInput", req.mask)  # "auto" and DeskMask became desk_mask
        image, mask_info = load_image(given, background=(0, 0, 0))
        if (
            req.mask_sha256 is not None
            and req.image_sha256 is not None
            and info is not None
            and info.sha256 != req.image_sha256
        ):
            raise InvalidRequestError(
                "This request's mask was drawn for the photo it was recorded with (image_sha256 "
                f"{req.image_sha256[:12]}...), but this is another photo (sha256 "
                f"{info.sha256[:12]}...): pass the same photo, or a mask drawn for this one "
                "with image_sha256=None and mask_sha256=None."
            )
        mask = _checked(image.convert("L"), photo)
        if req.mask_sha256 not in (None, mask_info.sha256):
            warnings.append("The mask differs from the one this request was recorded with.")
        req = req.model_copy(update={"mask_sha256": mask_info.sha256})
    return MaskInputs(
        request=req, mask=mask, seconds=time.perf_counter() - started, warnings=warnings
    )


def _checked(mask: Image.Image, photo: Image.Image) -> Image.Image:
    """``mask`` at the photo's size, or an `ImageInputError` saying what is wrong with it."""
    from PIL import Image

    if mask.size != photo.size:
        aspect, photo_aspect = mask.width / mask.height, photo.width / photo.height
        if abs(aspect - photo_aspect) > _ASPECT_TOLERANCE * photo_aspect:
            raise ImageInputError(
                f"The mask is {mask.width}x{mask.height} but the photo is "
                f"{photo.width}x{photo.height} (upright): another shape, so it can't mark "
                "places in this photo. Draw the mask over this photo (the same size, or the "
                "same aspect ratio), or use mask='auto' to find the desk."
            )
        mask = mask.resize(photo.size, Image.Resampling.BILINEAR)
    low, high = cast("tuple[int, int]", mask.getextrema())  # one band: (min, max)
    if high < 128:
        raise ImageInputError(
            "The mask is all black: nothing would change. White marks what to change, black "
            "what to keep; or use mask='auto' to find the desk."
        )
    if low >= 128:
        raise ImageInputError(
            "The mask is all white: the whole photo would change and nothing be kept. Leave "
            "out mask=... to restyle the whole photo, or paint what to keep black."
        )
    return mask


def fit_box(photo_size: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The part of a photo of ``photo_size`` that `prepare_image` scales to ``size``: the
    centred crop of ``size``'s aspect ratio (as ``ImageOps.fit``), as a pixel box."""
    width, height = photo_size
    ratio = size[0] / size[1]
    if width / height > ratio:
        crop_w, crop_h = round(height * ratio), height
    else:
        crop_w, crop_h = width, round(width / ratio)
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return (left, top, left + crop_w, top + crop_h)


def keep_room(
    photo: Image.Image, images: list[Image.Image], mask: Image.Image
) -> tuple[list[Image.Image], list[str]]:
    """Each image over ``photo`` where ``mask`` is white, the photo's own pixels where it is
    black, at the photo's size (`deskgen.masks.composite_unmasked`)."""
    from PIL import Image

    from .masks import composite_unmasked

    kept: list[Image.Image] = []
    warnings: list[str] = []
    for image in images:
        box = fit_box(photo.size, image.size)
        if box == (0, 0, *photo.size):
            kept.append(composite_unmasked(photo, image, mask))
            continue
        # the model saw a centre crop: put the image back over it, keep the rest
        canvas = photo.copy()
        size = (box[2] - box[0], box[3] - box[1])
        canvas.paste(image.resize(size, Image.Resampling.LANCZOS), box[:2])
        inside = Image.new("L", photo.size, 0)
        inside.paste(mask.crop(box), box[:2])
        if inside.getbbox() != mask.getbbox() and not warnings:
            warnings.append(
                "Part of the mask lies outside the crop the model saw (the output's aspect "
                "ratio differs from the photo's): that part was kept as it is. Leave "
                "width/height unset to generate at the photo's aspect ratio."
            )
        kept.append(composite_unmasked(photo, canvas, inside))
    return kept, warnings
