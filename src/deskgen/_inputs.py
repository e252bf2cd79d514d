"""What a request brings besides its prompt, read before any backend sees it: the desk photo,
the mask (read or found: `deskgen._masking`), the control images and the reference images.
Every image is read as a photo (`deskgen.load_image`: Pillow's bomb limits, upright, no
metadata) and recorded by its digest, never by its file; a replayed request that names a
digest must bring the same image. What a backend's profile does not take is refused here, with
the backends that do take it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._exceptions import InvalidRequestError, UnsupportedOperationError
from ._images import ImageInfo, load_image
from ._masking import read_mask
from ._registry import backends_with, either

if TYPE_CHECKING:
    from PIL import Image

    from ._models import GenerationRequest
    from .backends._profile import BackendProfile

__all__ = ["RequestInputs", "read_inputs"]


@dataclass
class RequestInputs:
    """A request's images, read, with the request updated with their digests."""

    request: GenerationRequest
    photo: Image.Image | None
    info: ImageInfo | None
    """The photo's `ImageInfo` (digest, size, what was normalised)."""
    mask: Image.Image | None = None
    """Grey, the photo's size: white to change, black to keep (found or given)."""
    mask_seconds: float = 0.0
    """Finding the mask (``mask="auto"``)."""
    control_images: list[Image.Image | None] | None = None
    references: list[Image.Image] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def read_inputs(
    req: GenerationRequest, profile: BackendProfile, *, backend_name: str, device: str = "cpu"
) -> RequestInputs:
    """Read ``req``'s images for a backend with ``profile``; find its mask on ``device``
    (``mask="auto"``: `deskgen._masking.read_mask`).

    Raises:
        ImageInputError: an image can't be read, a mask that can't mark this photo, no desk
            found.
        InvalidRequestError: a recorded digest without its image, a mask without a photo.
        UnsupportedOperationError: masks, control or reference images the backend doesn't
            take.
    """
    photo, info = load_image(req.image) if req.image is not None else (None, None)
    warnings = _check_photo(req, info)
    if req.masked and not profile.masks:
        takers = either(backends_with("masks"))
        raise UnsupportedOperationError(
            f"The {backend_name!r} backend takes no mask (it has no inpainting pipeline): "
            f"leave out mask=... to change the whole photo, or use {takers} to change only "
            "the masked part."
        )
    masked = read_mask(req, photo, info, device=device)
    req, mask = masked.request, masked.mask
    warnings += masked.warnings
    if req.true_cfg_scale is not None and not profile.true_cfg:
        takers = either(backends_with("true_cfg"))
        raise UnsupportedOperationError(
            f"The {backend_name!r} backend takes no true_cfg_scale: its guidance_scale is its "
            f"classifier-free guidance. Leave out true_cfg_scale, or use {takers} (a "
            "guidance-distilled model, whose guidance_scale is the distilled guidance)."
        )
    req, control_images = _control_images(req, profile, backend_name, warnings)
    req, references = _references(req, profile, backend_name, warnings, photo=photo)
    return RequestInputs(
        request=req,
        photo=photo,
        info=info,
        mask=mask,
        mask_seconds=masked.seconds,
        control_images=control_images,
        references=references,
        warnings=warnings,
    )


def _check_photo(request: GenerationRequest, info: ImageInfo | None) -> list[str]:
    """Compare the photo with the one a replayed request was recorded from."""
    expected = request.image_sha256
    if expected is None:
        return []
    if info is None:
        raise InvalidRequestError(
            "This request was made from a desk photo (image_sha256 "
            f"{expected[:12]}...) but no image was given: pass the same photo with "
            "image=..., or set image_sha256=None to generate from the prompt alone."
        )
    if info.sha256 != expected:
        return [
            "The photo differs from the one this request was recorded with "
            f"(sha256 {info.sha256[:12]}... instead of {expected[:12]}...)."
        ]
    return []


def _control_images(
    req: GenerationRequest, profile: BackendProfile, backend_name: str, warnings: list[str]
) -> tuple[GenerationRequest, list[Image.Image | None] | None]:
    """Read the request's control images (safely, as photos) and record their digests."""
    given = req.control_image
    expected = req.control_image_sha256
    if not profile.control_images:
        if given is not None or req.control_scale is not None or expected is not None:
            takers = " or ".join(
                f"DeskGenerator({name!r}, ...)" for name in backends_with("control_images")
            )
            raise UnsupportedOperationError(
                f"The {backend_name!r} backend takes no control images or control "
                f"scales: leave out control_image/control_scale, or use {takers} to keep "
                "the photo's structure."
            )
        return req, None
    if given is None:
        if expected is not None and any(d is not None for d in expected):
            raise InvalidRequestError(
                "This request was made with control images (control_image_sha256) but "
                "none was given: pass the same images with control_image=..., or set "
                "control_image_sha256=None to compute the controls from the photo."
            )
        return req, None
    items = given if isinstance(given, list) else [given]
    if not items or all(item is None for item in items):
        raise InvalidRequestError(
            "control_image is an empty list (or only None): give an image per control, "
            "or leave it out to compute the controls from the photo."
        )
    images: list[Image.Image | None] = []
    digests: list[str | None] = []
    for item in items:
        if item is None:
            images.append(None)
            digests.append(None)
            continue
        image, info = load_image(item, background=(0, 0, 0))  # transparent: no signal
        images.append(image)
        digests.append(info.sha256)
    if expected is not None and expected != digests:
        warnings.append("The control images differ from the ones this request was recorded with.")
    return req.model_copy(update={"control_image_sha256": digests}), images


def _references(
    req: GenerationRequest,
    profile: BackendProfile,
    backend_name: str,
    warnings: list[str],
    *,
    photo: Image.Image | None,
) -> tuple[GenerationRequest, list[Image.Image]]:
    """Read the request's reference images and record their digests."""
    given = req.references
    expected = req.reference_sha256
    if not given:
        if expected:
            raise InvalidRequestError(
                "This request was made with reference images (reference_sha256) but none was "
                "given: pass the same images with references=[...], or set "
                "reference_sha256=None."
            )
        if given is not None and not isinstance(given, list):
            raise InvalidRequestError("references must be a list of images.")
        return req, []
    if not isinstance(given, list):
        raise InvalidRequestError(
            "references must be a list of images (paths, bytes, files or PIL images)."
        )
    if profile.references == 0:
        takers = backends_with("references")
        raise UnsupportedOperationError(
            f"The {backend_name!r} backend takes no reference images: leave out "
            f"references=..., or use {either(takers)} (which take them with the photo)."
        )
    if photo is None:
        raise InvalidRequestError(
            "Reference images go with a desk photo to edit: pass image=... too."
        )
    if len(given) > profile.references:
        raise InvalidRequestError(
            f"{len(given)} reference images, but the {backend_name!r} backend takes at most "
            f"{profile.references} besides the photo: pass fewer."
        )
    images: list[Image.Image] = []
    digests: list[str] = []
    for item in given:
        image, info = load_image(item)
        images.append(image)
        digests.append(info.sha256)
    if expected is not None and expected != digests:
        warnings.append("The reference images differ from the ones this request was recorded with.")
    return req.model_copy(update={"reference_sha256": digests}), images
