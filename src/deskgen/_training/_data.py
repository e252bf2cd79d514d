"""The training data: the imagefolder's images and captions, aspect-ratio buckets, and the
resize-flip-crop of an image to its bucket."""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .._dataset import METADATA, SPLIT, _row, inside
from .._exceptions import ConfigError
from ._config import LoraTrainingConfig

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class _Sample:
    path: Path
    caption: str
    size: tuple[int, int]
    """(width, height) of the image file."""
    bucket: tuple[int, int] = (0, 0)


def _read_data(config: LoraTrainingConfig) -> list[_Sample]:
    from .._images import load_image

    root = Path(os.path.expanduser(config.data))
    for folder in (root, root / SPLIT):
        if (folder / METADATA).is_file():
            break
    else:
        raise ConfigError(
            f"No {METADATA} in {config.data!r} or its {SPLIT}/ folder: give an imagefolder with "
            'a line {"file_name": ..., "caption": ...} per image (deskgen dataset writes one).'
        )
    samples = []
    with (folder / METADATA).open("rb") as fh:  # bytes: a line may be cut inside a character
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = _row(line)
            if row is None:
                continue  # cut short by an interrupted dataset run (skipped as the dataset does)
            name, caption = row.get("file_name"), row.get(config.caption_column)
            if not isinstance(name, str) or not isinstance(caption, str):
                raise ConfigError(
                    f"{folder / METADATA}:{number} has no file_name or no "
                    f"{config.caption_column!r} text: every line needs both."
                )
            path = inside(folder, name)
            if path is None:
                raise ConfigError(
                    f"{folder / METADATA}:{number} names {name!r}, outside the dataset folder: "
                    "file_name must be a path inside it."
                )
            if not path.is_file():
                continue  # an image the dataset run did not finish
            image, _ = load_image(path)  # as training will see it: EXIF-rotated, RGB
            samples.append(_Sample(path=path, caption=caption, size=image.size))
    if not samples:
        raise ConfigError(f"{folder / METADATA} lists no existing image: nothing to train on.")
    return samples


def _buckets(resolution: int, multiple: int) -> list[tuple[int, int]]:
    """(width, height) pairs of about ``resolution**2`` pixels, sides multiples of ``multiple``,
    aspect ratios from 1:4 to 4:1."""
    area = resolution * resolution
    found = set()
    width = multiple
    while width <= resolution * 4:
        height = max(multiple, int(area / width) // multiple * multiple)
        if 0.25 <= width / height <= 4.0:
            found.add((width, height))
        width += multiple
    return sorted(found)


def _nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    aspect = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1]))


def _prepare(
    image: Image.Image, bucket: tuple[int, int], *, center: bool, flip: bool, rng: random.Random
) -> tuple[Image.Image, tuple[int, int], tuple[int, int]]:
    """Resize ``image`` to cover ``bucket``, flip it if asked, and crop it, as diffusers' script
    does: the crop, the image's original (height, width) and the crop's top-left (top, left)."""
    from PIL import Image as PILImage
    from PIL import ImageOps

    width, height = bucket
    original = (image.height, image.width)
    scale = max(width / image.width, height / image.height)
    resized = image.resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))),
        PILImage.Resampling.BILINEAR,
    )
    if flip:
        resized = ImageOps.mirror(resized)
    spare_x, spare_y = resized.width - width, resized.height - height
    if center:
        left, top = spare_x // 2, spare_y // 2
    else:
        left, top = rng.randint(0, spare_x), rng.randint(0, spare_y)
    return resized.crop((left, top, left + width, top + height)), original, (top, left)
