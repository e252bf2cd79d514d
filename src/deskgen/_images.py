"""Reading the user's desk photo safely and sizing it for a model.

Every photo goes through :func:`load_image`: the format is sniffed from the bytes against an
allowlist, decompression bombs are refused before any pixel is decoded, EXIF orientation is
applied, embedded ICC profiles are converted to sRGB, every mode becomes 8-bit RGB (transparency
over white, 16-bit scaled, not clipped), and the result is a fresh image that carries no metadata
(EXIF, GPS, XMP, comments) from the input.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from pathlib import Path
from typing import IO, TypeAlias, Union

from PIL import Image, ImageCms, ImageOps
from pydantic import BaseModel, ConfigDict

from ._exceptions import ImageInputError, ImageTooLargeError

__all__ = [
    "ALLOWED_FORMATS",
    "ImageInfo",
    "ImageInput",
    "fit_size",
    "load_image",
    "prepare_image",
]

ImageInput: TypeAlias = Union[str, "os.PathLike[str]", bytes, IO[bytes], Image.Image]
"""What deskgen accepts as a photo: a path, raw bytes, a binary file object or a PIL image."""

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
"""Formats Pillow may decode for deskgen (JPEG includes multi-picture MPO phone photos). EPS,
PSD, ICO and the other rarely needed decoders are off."""

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

MAX_FILE_BYTES = 100 * 2**20
"""Photo files above this size are refused before they are read into memory."""


class ImageInfo(BaseModel):
    """What the generation record keeps about an input photo (never its pixels or metadata)."""

    model_config = ConfigDict(frozen=True)

    source: str
    """How the photo was given: ``"path"``, ``"bytes"``, ``"file"`` or ``"PIL.Image"`` (never the
    file name, which can be personal)."""
    format: str | None
    original_width: int
    original_height: int
    sha256: str
    """Digest of the normalised RGB pixels: the same photo gives the same digest."""


def _open(data: ImageInput) -> tuple[Image.Image, str]:
    if isinstance(data, Image.Image):
        _check_pixels(data.size)
        return data, "PIL.Image"
    if isinstance(data, (bytes, bytearray, memoryview)):
        fp: IO[bytes] = io.BytesIO(bytes(data))
        source = "bytes"
    elif isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_file():
            raise ImageInputError(f"No image file at {str(path)!r}: check the path.")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImageTooLargeError(
                f"{str(path)!r} is {path.stat().st_size} bytes, over deskgen's "
                f"{MAX_FILE_BYTES // 2**20} MiB limit for a photo: downscale or recompress it."
            )
        fp = io.BytesIO(path.read_bytes())
        source = "path"
    elif hasattr(data, "read"):
        seekable = getattr(data, "seekable", None)
        start = data.tell() if callable(seekable) and seekable() else None
        raw = data.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise ImageTooLargeError(
                f"The file object holds over {MAX_FILE_BYTES // 2**20} MiB, deskgen's limit for "
                "a photo: downscale or recompress it."
            )
        if start is not None:
            data.seek(start)  # rewound, so the same request can be replayed
        if not raw:
            raise ImageInputError(
                "The file object gave no data: it is empty, or it was read to the end already "
                "(non-seekable streams can be used once; pass bytes to reuse a photo)."
            )
        fp = io.BytesIO(raw)
        source = "file"
    else:
        raise ImageInputError(
            f"Unsupported image input of type {type(data).__name__}: pass a path, bytes, "
            "a binary file object or a PIL.Image.Image."
        )
    try:
        image = Image.open(fp, formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(_too_large_message(None)) from exc
    except Exception as exc:  # Pillow's decoders raise many kinds on crafted files
        raise ImageInputError(
            f"Could not read the image ({source}): not one of the accepted formats "
            f"{', '.join(ALLOWED_FORMATS)}, or the file is corrupt or truncated. Convert it to "
            "JPEG or PNG."
        ) from exc
    _check_pixels(image.size)
    return image, source


def _too_large_message(size: tuple[int, int] | None) -> str:
    dims = f" ({size[0]}x{size[1]})" if size else ""
    return (
        f"The image{dims} has more pixels than the decompression-bomb limit "
        f"PIL.Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS}; it was refused before decoding. "
        "Downscale the photo before passing it (a desk photo needs no more than a few megapixels)."
    )


def _check_pixels(size: tuple[int, int]) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and size[0] * size[1] > limit:
        raise ImageTooLargeError(_too_large_message(size))


def _to_srgb(image: Image.Image) -> Image.Image:
    profile = image.info.get("icc_profile")
    if not profile or image.mode not in ("RGB", "RGBA", "CMYK", "L", "LA"):
        return image
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        out_mode = "RGBA" if image.mode in ("RGBA", "LA") else "RGB"
        if image.mode == "LA":
            image = image.convert("RGBA")
        converted = ImageCms.profileToProfile(
            image, src, ImageCms.createProfile("sRGB"), outputMode=out_mode
        )
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image  # a broken profile is ignored, like browsers do
    return converted if converted is not None else image


def _max_value(image: Image.Image) -> float:
    extrema = image.getextrema()  # (min, max) for single-band images
    high = extrema[1]
    return float(high) if isinstance(high, (int, float)) else float(max(high))


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        wide = image.convert("I") if mode != "I" else image
        if mode != "I" or _max_value(wide) > 255:  # 16-bit range: scale, don't clip
            wide = wide.point(lambda v: v * (1 / 257))
        image = wide.convert("L")
    elif mode == "F":
        unit_range = _max_value(image) <= 1.0
        image = (image.point(lambda v: v * 255) if unit_range else image).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        under = Image.new("RGBA", rgba.size, (*background, 255))
        image = Image.alpha_composite(under, rgba)
    return image.convert("RGB")


def load_image(
    data: ImageInput, *, background: tuple[int, int, int] = (255, 255, 255)
) -> tuple[Image.Image, ImageInfo]:
    """Read a photo into a clean 8-bit RGB image and describe it for the record.

    Transparent pixels are composited over ``background`` (white, as a photo viewer shows
    them; control images use black, the background of edge and depth maps).

    Raises:
        ImageInputError: unreadable data, a format outside `ALLOWED_FORMATS`, a wrong type.
        ImageTooLargeError: more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``.
    """
    image, source = _open(data)
    fmt = image.format
    original_size = image.size
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image)
        image = _to_rgb(_to_srgb(image), background)
    except ImageInputError:
        raise
    except Exception as exc:  # crafted or damaged files: TypeError, struct.error, ...
        raise ImageInputError(
            f"Could not decode the image ({source}): {type(exc).__name__}: {exc}. The file is "
            "damaged or unusual: re-save it as JPEG or PNG."
        ) from exc
    # A fresh image holds the pixels only: no EXIF, GPS, ICC, XMP or text chunks survive.
    clean = Image.frombytes("RGB", image.size, image.tobytes())
    info = ImageInfo(
        source=source,
        format=fmt,
        original_width=original_size[0],
        original_height=original_size[1],
        sha256=hashlib.sha256(clean.tobytes()).hexdigest(),
    )
    return clean, info


def fit_size(aspect: float, *, native: tuple[int, int], multiple: int) -> tuple[int, int]:
    """The size closest to the given aspect ratio with about the model's native pixel area.

    ``aspect`` is width / height. Both sides are multiples of ``multiple`` (at least one
    ``multiple``); of the grid sizes around the exact one, the one whose aspect ratio is closest
    wins, then the one whose area is closest to the native area.
    """
    area = native[0] * native[1]
    exact_w = math.sqrt(area * aspect)
    exact_h = area / exact_w

    def around(value: float) -> set[int]:
        low = max(1, math.floor(value / multiple))
        return {low * multiple, (low + 1) * multiple}

    candidates = [(w, h) for w in around(exact_w) for h in around(exact_h)]
    return min(
        candidates,
        key=lambda wh: (
            round(abs(math.log(wh[0] / wh[1] / aspect)), 6),
            abs(wh[0] * wh[1] - area),
        ),
    )


def prepare_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize to ``size`` keeping the aspect ratio: centre-crop the excess, then Lanczos."""
    if image.size == size:
        return image
    return ImageOps.fit(image, size, method=Image.Resampling.LANCZOS)
