"""A structure-preserving desk makeover: SDXL + ControlNets (canny edges and depth).

Offline by default: a tiny random-weight SDXL with tiny ControlNets and a tiny depth model (the
images are noise; the control images are real edges and a real, if untrained, depth map).
With real weights on a GPU (downloads ~10 GB the first time):

    python examples/controlnet_makeover.py --photo my-desk.jpg --real
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from deskgen import Control, DeskGenerator
from deskgen.demo import sample_desk_photo, tiny_controlnet_options, tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photo", default=str(sample_desk_photo()), help="your desk photo")
    parser.add_argument("--real", action="store_true", help="SDXL base + diffusers ControlNets")
    parser.add_argument("--out", default="controlnet-makeover.png")
    args = parser.parse_args()

    if args.real:
        # defaults: stabilityai/stable-diffusion-xl-base-1.0, diffusers/controlnet-canny-sdxl-1.0,
        # diffusers/controlnet-depth-sdxl-1.0 and Depth Anything V2 Small
        model, options, steps = None, {"variant": "fp16"}, 30
    else:
        tiny = tiny_controlnet_options()
        model, steps = str(tiny_model("sdxl")), 12
        options = {"controlnet": json.loads(tiny["controlnet"]), "depth_model": tiny["depth_model"]}
    control: Any = [
        Control(kind="canny", scale=0.5, low_threshold=100, high_threshold=200),
        Control(kind="depth", scale=0.3, end=0.8),  # free for the last fifth: crisper details
    ]
    out = Path(args.out)
    with DeskGenerator("sdxl-controlnet", model=model, control=control, **options) as gen:
        request: dict[str, Any] = {
            "prompt": "a tidy minimalist desk, hidden cables, warm desk lamp, plants, photo",
            "negative_prompt": "preset:default",  # the seed's controlnet_short preset
            "image": args.photo,
            "steps": steps,
            "seed": 42,
        }
        # img2img + ControlNets: keeps the photo's light and colours as far as strength allows
        edit = gen.generate(**request)  # strength: the backend's 0.8
        # photo as control only: a new desk in the same room layout (the seed's SDXL+ControlNet)
        fresh = gen.generate(**request, strength=1.0, control_scale=[0.6, 0.4])

    for name, result in (("edit", edit), ("fresh", fresh)):
        path = out.with_name(f"{out.stem}-{name}.png")
        result.save(path)
        print(f"{name}: {result.mode}, {result.denoising_steps} steps, wrote {path}")
        print(f"  controls: {[(c.kind, c.scale, c.end) for c in result.controls]}")
        print(f"  control images: {result.timings.control * 1000:.0f} ms")
    for control, image in zip(edit.controls, edit.control_images, strict=True):
        path = out.with_name(f"{out.stem}-control-{control.kind}.png")
        image.save(path)  # what the ControlNets saw: look here when a makeover goes wrong
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
