"""Edit the desk photo with FLUX.2 [klein]: 4 steps, reference images, no guidance to tune.

The photo goes in with an instruction (what changes, what stays); a reference image adds an
object to place ("put the lamp from the second image on the left of the desk"). The
step-distilled FLUX.2-klein-4B runs 4 steps without guidance; the undistilled base model runs 50
steps with guidance 4.0, against a negative prompt if you give one. deskgen reads which it is
from the model.

Offline by default: tiny random-weight FLUX.2 [klein] weights built into the deskgen cache (the
images are noise). With the real weights on a GPU (about 16 GB of bf16 weights; the 12 GB
setup quantizes the transformer to int8 and offloads):

    python examples/flux2_klein_makeover.py --real
"""

from __future__ import annotations

import argparse
from typing import Any

from deskgen import DeskGenerator, QuantConfig
from deskgen.demo import sample_desk_photo, tiny_model

INSTRUCTION = (
    "make this desk tidy and minimalist: hide the cables, add a warm lamp; keep the window, "
    "the wall and the monitor"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--real", action="store_true", help="the FLUX.2-klein-4B models on a GPU")
    parser.add_argument("--out", default="flux2-klein-makeover.png")
    args = parser.parse_args()

    if args.real:
        common: dict[str, Any] = {
            "quantization": QuantConfig(weights="int8", components=("transformer",)),
            "offload": "model",
        }
        distilled: dict[str, Any] = {"model": "black-forest-labs/FLUX.2-klein-4B", **common}
        base: dict[str, Any] = {"model": "black-forest-labs/FLUX.2-klein-base-4B", **common}
        size: dict[str, Any] = {}
    else:
        distilled = {"model": str(tiny_model("flux2-klein")), "device": "cpu"}
        base = {"model": str(tiny_model("flux2-klein-base")), "device": "cpu"}
        size = {"width": 128, "height": 96}  # tiny model: keep the output small
    photo = sample_desk_photo()
    with DeskGenerator("flux2-klein", **distilled) as gen:
        # steps and guidance left out: 4 steps, no guidance (the distilled model's)
        result = gen.generate(prompt=INSTRUCTION, image=photo, seed=7, **size)
        print(result.mode, result.images[0].size, f"{result.timings.total:.1f} s")
        result.save(args.out)
        lamp = result.images[0].crop((0, 0, 64, 64))  # any picture of a lamp will do
        with_lamp = gen.generate(
            prompt="put the lamp from the second image on the left of the desk",
            image=photo,
            references=[lamp],
            seed=7,
            **size,
        )
        print("references:", with_lamp.request.reference_sha256)
    with DeskGenerator("flux2-klein", **base) as gen:
        guided = gen.generate(
            prompt=INSTRUCTION, negative_prompt="clutter, cables", image=photo, seed=7, **size
        )
        print(f"base: {guided.request.steps} steps, guidance {guided.request.guidance_scale:g}")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
