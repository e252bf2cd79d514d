"""Reading the user's desk photo safely and sizing it for a model.

Every photo goes through :func:`load_image`: the format is sniffed from the bytes against an
allowlist, decompression bombs are refused before any pixel is decoded, EXIF orientation is
applied (for HEIC/HEIF, the container's rotation, exactly once), embedded ICC profiles are
converted to sRGB, every mode becomes 8-bit RGB (transparency over white, 16-bit scaled, not
clipped), and the result is a fresh image that carries no metadata (EXIF, GPS, XMP, comments)
from the input. HEIC/HEIF needs the ``deskgen[heic]`` extra (see :mod:`deskgen._heic`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import io
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeAlias, Union

import PIL
from PIL import Image, ImageCms, ImageOps
from pydantic import BaseModel, ConfigDict

from . import _heic
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

_HAS_AVIF_PLUGIN = importlib.util.find_spec("PIL.AvifImagePlugin") is not None  # Pillow 11.3+

_PILLOW_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF") + (
    ("AVIF",) if _HAS_AVIF_PLUGIN else ()
)

ALLOWED_FORMATS: tuple[str, ...] = (*_PILLOW_FORMATS, "HEIF")
"""Formats deskgen decodes (JPEG includes multi-picture MPO phone photos). AVIF is read by
Pillow's own plugin, listed where this Pillow has it (11.3 and newer). HEIF (HEIC, iPhones'
default) is read by pillow-heif, the optional ``deskgen[heic]`` extra: without it a HEIC photo is
refused with a message that names the extra. EPS, PSD, ICO and the other rarely needed decoders
are off."""

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
        return _open_bytes(bytes(data), "bytes"), "bytes"
    if isinstance(data, (str, os.PathLike)):
        return _open_bytes(_read_path(data), "path"), "path"
    if hasattr(data, "read"):
        return _open_bytes(_read_file_object(data), "file"), "file"
    hint = " (for an array: PIL.Image.fromarray(array))" if hasattr(data, "__array__") else ""
    raise ImageInputError(
        f"Unsupported image input of type {type(data).__name__}: pass a path, bytes, a binary "
        f"file object (open(path, 'rb')) or a PIL.Image.Image{hint}."
    )


_ENCODED_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")


def _looks_encoded(text: str) -> bool:
    """Whether a str that is not a file is an image as base64 or a data: URL (a common slip)."""
    if text[:5].lower() == "data:":
        return True
    head = text[:64]
    try:
        raw = base64.b64decode(head[: len(head) // 4 * 4], validate=True)
    except ValueError:  # binascii.Error included
        return False
    return raw.startswith(_ENCODED_MAGIC) or raw[4:8] == b"ftyp"


def _read_path(data: str | os.PathLike[str]) -> bytes:
    try:
        path = Path(data)
    except TypeError as exc:  # an os.PathLike whose __fspath__ gives bytes
        raise ImageInputError(
            f"{type(data).__name__} is a path-like object that does not give a str path: pass "
            "a str path or a pathlib.Path (os.fsdecode turns a bytes path into a str)."
        ) from exc
    text = str(path)
    shown = repr(text) if len(text) <= 120 else f"{text[:60]!r}... ({len(text)} characters)"
    if not path.is_file():
        hint = (
            " A str is taken as a path; this one looks like an encoded image (base64 or a data: "
            "URL): decode it and pass the bytes, e.g. base64.b64decode(text)."
            if _looks_encoded(text)
            else ""
        )
        raise ImageInputError(f"No image file at {shown}: check the path.{hint}")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ImageTooLargeError(
            f"{shown} is {size} bytes, over deskgen's {MAX_FILE_BYTES // 2**20} MiB limit for a "
            "photo: downscale or recompress it."
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageInputError(
            f"Could not read {shown}: {exc.strerror or exc}. Check that the file is readable "
            "by this process, or pass the bytes."
        ) from exc


_TEXT_MODE = "images are binary: open the file in binary mode: open(path, 'rb'), or pass the path"


def _read_file_object(data: IO[bytes]) -> bytes:
    if getattr(data, "closed", False) is True:
        raise ImageInputError(
            "The file object is closed: pass it while it is open (inside its `with` block), or "
            "pass the path or the bytes."
        )
    readable = getattr(data, "readable", None)
    if callable(readable) and not _safely(readable, default=True):
        mode = getattr(data, "mode", None)
        raise ImageInputError(
            f"The file object is not open for reading{f' (mode {mode!r})' if mode else ''}: "
            "open the photo with open(path, 'rb')."
        )
    if isinstance(data, io.TextIOBase):
        raise ImageInputError(
            f"The photo is a text-mode file object ({type(data).__name__}); {_TEXT_MODE}."
        )
    seekable = getattr(data, "seekable", None)
    start: int | None = None
    if callable(seekable) and _safely(seekable, default=False):
        with contextlib.suppress(OSError, ValueError):
            start = data.tell()
    chunks: list[bytes] = []
    total = 0
    while total <= MAX_FILE_BYTES:  # raw pipes and sockets return what has arrived: read to EOF
        try:
            chunk: object = data.read(MAX_FILE_BYTES + 1 - total)
        except UnicodeDecodeError as exc:
            raise ImageInputError(f"The file object is a text stream; {_TEXT_MODE}.") from exc
        except io.UnsupportedOperation as exc:
            raise ImageInputError(
                f"The file object cannot be read ({exc}): open the photo with open(path, 'rb')."
            ) from exc
        except (OSError, ValueError) as exc:
            raise ImageInputError(
                f"Reading the file object failed ({type(exc).__name__}: {exc}): check the "
                "stream, or read it yourself and pass the bytes."
            ) from exc
        if isinstance(chunk, str):
            raise ImageInputError(
                f"The file object's read() returned str, not bytes; {_TEXT_MODE}."
            )
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise ImageInputError(
                f"The file object's read() returned {type(chunk).__name__}, not bytes (a "
                "non-blocking stream with no data ready gives None): pass a blocking binary "
                "file object, or the bytes."
            )
        if not chunk:
            break
        chunks.append(bytes(chunk))
        total += len(chunks[-1])
    if total > MAX_FILE_BYTES:
        raise ImageTooLargeError(
            f"The file object holds over {MAX_FILE_BYTES // 2**20} MiB, deskgen's limit for "
            "a photo: downscale or recompress it."
        )
    if start is not None:
        data.seek(start)  # rewound, so the same request can be replayed
    if not total:
        raise ImageInputError(
            "The file object gave no data: it is empty, or it was read to the end already "
            "(non-seekable streams can be used once; pass bytes to reuse a photo)."
        )
    return b"".join(chunks)


def _safely(probe: Callable[[], object], *, default: bool) -> bool:
    """Call ``readable()``/``seekable()``; some streams raise instead of answering."""
    try:
        return bool(probe())
    except (OSError, ValueError):
        return default


def _accepted() -> str:
    return f"{', '.join(_PILLOW_FORMATS)}, HEIC/HEIF (with deskgen[heic])"


def _open_bytes(raw: bytes, source: str) -> Image.Image:
    """Read the header of an encoded photo (no pixel is decoded) and check its size."""
    container = _heic.sniff(raw[:4096])
    fp = io.BytesIO(raw)
    if container is not None and container[0] == "HEIF":
        try:
            image: Image.Image = _heic.open_heif(fp, container[1])
        except ImageInputError:
            raise  # pillow-heif is missing: the message names the extra
        except Exception as exc:  # libheif's errors on damaged or crafted files
            raise ImageInputError(
                f"Could not read the image ({source}): a HEIC/HEIF file (brand "
                f"{container[1]!r}) that is corrupt, truncated or of a kind pillow-heif cannot "
                f"read ({type(exc).__name__}: {exc}). Convert it to JPEG or PNG."
            ) from exc
        _check_pixels(image.size)
        return image
    if container is not None and container[0] == "AVIF" and not _heic.avif_decoder_available():
        raise ImageInputError(
            f"Could not read the image ({source}): it is AVIF, and this Pillow "
            f"({PIL.__version__}) has no AVIF decoder. Pillow 11.3 and newer read AVIF "
            "(pip install -U pillow); or convert the photo to JPEG."
        )
    try:
        image = Image.open(fp, formats=_PILLOW_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(_too_large_message(None)) from exc
    except Exception as exc:  # Pillow's decoders raise many kinds on crafted files
        raise ImageInputError(
            f"Could not read the image ({source}): not one of the accepted formats "
            f"{_accepted()}, or the file is corrupt or truncated. Convert it to JPEG or PNG."
        ) from exc
    _check_pixels(image.size)
    return image


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
        ImageInputError: unreadable data, a format outside `ALLOWED_FORMATS` (HEIC without the
            ``deskgen[heic]`` extra), a text-mode or closed file object, a wrong type.
        ImageTooLargeError: more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``.
    """
    image, source = _open(data)
    fmt = image.format
    original_size = image.size
    try:
        if getattr(image, "n_frames", 1) > 1 and fmt != "HEIF":
            image.seek(0)  # a HEIF file opens at its primary image, which need not be the first
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
