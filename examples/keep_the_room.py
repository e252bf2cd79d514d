"""Keep the room, change the desk: find the desk in the photo, redraw only it.

``mask="auto"`` finds the desk and what stands on it with a segmentation model; only that is
redrawn, and outside the mask the result is the photo's own pixels. The script writes the
makeover, the mask, the photo with the mask tinted over it, and a before/after picture.

Offline by default: a tiny segmentation model trained on the sample photo (it knows that desk
and nothing else) and tiny random-weight SD weights (the redrawn desk is noise), both built
into the deskgen cache. With real weights on a GPU (SDXL with its inpainting pipeline, and
the ADE20K Mask2Former that ``mask="auto"`` uses by default):

    python examples/keep_the_room.py --real
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from deskgen import DeskGenerator, DeskMask
from deskgen.demo import sample_desk_photo, tiny_model, tiny_segmenter
from deskgen.masks import mask_overlay

PROMPT = "a tidy minimalist desk setup, warm lamp, hidden cables, a plant, soft daylight"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--real", action="store_true", help="SDXL on a GPU")
    parser.add_argument("--out", default="keep-the-room", help="folder to write into")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.real:
        backend, options = "sdxl", {"model": "stabilityai/stable-diffusion-xl-base-1.0"}
        mask = DeskMask(grow=16, blur=8)  # the default model: an ADE20K Mask2Former
        steps: dict[str, Any] = {}
    else:
        backend, options = "sd", {"model": str(tiny_model("sd")), "device": "cpu"}
        mask = DeskMask(model=str(tiny_segmenter()), grow=16, blur=8)
        steps = {"steps": 4}
    photo = sample_desk_photo()
    with DeskGenerator(backend, **options) as gen:
        result = gen.generate(prompt=PROMPT, image=photo, mask=mask, seed=3, **steps)
    assert result.mask is not None and result.photo is not None
    print(result.mode, result.images[0].size, f"{result.timings.total:.1f} s")
    print("found with", result.request.desk_mask.model if result.request.desk_mask else "?")
    result.save(out / "makeover.png", mask=True)  # makeover.png and makeover.mask.png
    mask_overlay(result.photo, result.mask).save(out / "mask-overlay.png")
    result.before_after().save(out / "before-after.png")
    changed = sum(result.mask.histogram()[128:]) / (result.mask.width * result.mask.height)
    print(f"{changed:.0%} of the photo redrawn; wrote {out}/")


if __name__ == "__main__":
    main()
