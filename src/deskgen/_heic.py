"""Phone photos in ISO-BMFF containers: HEIC/HEIF (iPhones) and AVIF.

The container is recognised from the brands of its ``ftyp`` box, before any decoder runs. AVIF is
decoded by Pillow itself (its AVIF plugin, Pillow 11.3 and newer). HEIC/HEIF is decoded by
pillow-heif, the optional ``deskgen[heic]`` extra, imported only when a HEIF file is actually
sniffed (``import deskgen`` never imports it) and never registered with Pillow: deskgen builds
pillow-heif's image class directly, so ``Image.open`` and ``Image.save`` in the caller's process
behave as before.

pillow-heif reads the container's header without decoding (deskgen then checks the size against
``PIL.Image.MAX_IMAGE_PIXELS``), applies the container's rotation and mirroring (``irot``/``imir``)
when it decodes, and resets the EXIF and XMP orientation to upright, so the photo is turned
exactly once; Pillow's AVIF plugin instead turns ``irot``/``imir`` into the EXIF orientation that
deskgen applies like a JPEG's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import IO

from PIL import ImageFile

from ._exceptions import ImageInputError

__all__ = ["avif_decoder_available", "open_heif", "sniff"]

HEIF_BRANDS = frozenset(
    {
        b"heic",  # HEVC still image (iPhone)
        b"heix",  # HEVC, 10-bit or 4:2:2 / 4:4:4
        b"heim",
        b"heis",
        b"hevc",  # HEVC image sequence (bursts, Live Photos' stills)
        b"hevx",
        b"hevm",
        b"hevs",
        b"mif1",  # generic HEIF image (brand of most Android HEIFs)
        b"mif2",
        b"msf1",  # generic HEIF sequence
    }
)
AVIF_BRANDS = frozenset({b"avif", b"avis"})

_MAX_FTYP = 4096  # a real ftyp box is a few dozen bytes; never scan more


def sniff(head: bytes) -> tuple[str, str] | None:
    """``("HEIF" | "AVIF", brand)`` when ``head`` starts with an ftyp box of a HEIF/AVIF image.

    AVIF files also carry the generic HEIF brands (``mif1``, ``miaf``), so an AVIF brand anywhere
    in the box wins. Other ISO-BMFF files (MP4 and MOV videos, CR3 raws) give ``None``.
    """
    if len(head) < 12 or head[4:8] != b"ftyp":
        return None
    size = int.from_bytes(head[:4], "big")
    end = min(size, len(head), _MAX_FTYP) if size >= 16 else 12
    brands = [head[8:12]] + [head[i : i + 4] for i in range(16, end - 3, 4)]
    for family, known in (("AVIF", AVIF_BRANDS), ("HEIF", HEIF_BRANDS)):
        for brand in brands:
            if brand in known:
                return family, brand.decode("ascii")
    return None


def open_heif(fp: IO[bytes], brand: str) -> ImageFile.ImageFile:
    """Open a HEIC/HEIF file with pillow-heif, reading its header only (no pixel is decoded).

    Raises:
        ImageInputError: pillow-heif is not installed (the message names the extra).
    """
    try:
        import pillow_heif
    except (ImportError, OSError) as exc:  # absent, or its native library failed to load
        raise ImageInputError(
            f"The photo is HEIC/HEIF (brand {brand!r}, what iPhones save by default): reading it "
            "needs pillow-heif, the optional extra: pip install 'deskgen[heic]'. Or convert the "
            "photo to JPEG (on the iPhone: Settings > Camera > Formats > Most Compatible)."
        ) from exc
    opener: Callable[[IO[bytes]], ImageFile.ImageFile] = pillow_heif.HeifImageFile  # untyped init
    return opener(fp)


def avif_decoder_available() -> bool:
    """Whether this Pillow has its AVIF codec (Pillow 11.3+ wheels do; some builds lack it)."""
    try:
        importlib.import_module("PIL._avif")
    except ImportError:
        return False
    return True
