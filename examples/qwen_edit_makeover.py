"""Edit the desk photo by instruction with Qwen-Image-Edit: the room stays the room.

The photo goes in with an instruction that says what changes and what stays; an Edit Plus
model (-2509, -2511) also takes a reference image ("put the lamp from the second image on the
left of the desk"). The pipeline's own Qwen2.5-VL then describes the photo.

Offline by default: tiny random-weight Qwen-Image-Edit Plus weights built into the deskgen cache
(the images are noise). With real weights on a GPU (about 58 GB of bf16 weights: the 24 GB
setup quantizes the transformer and the text encoder to int8 and offloads):

    python examples/qwen_edit_makeover.py --real
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
    parser.add_argument("--real", action="store_true", help="Qwen/Qwen-Image-Edit-2511 on a GPU")
    parser.add_argument("--out", default="qwen-edit-makeover.png")
    args = parser.parse_args()

    if args.real:
        options: dict[str, Any] = {
            "model": "Qwen/Qwen-Image-Edit-2511",
            "quantization": QuantConfig(weights="int8", components=("transformer", "text_encoder")),
            "offload": "model",
        }
        size: dict[str, int] = {}
        steps = 40
    else:
        options = {"model": str(tiny_model("qwen-image-edit-plus")), "device": "cpu"}
        size = {"width": 128, "height": 96}  # tiny model: keep the output small
        steps = 4
    photo = sample_desk_photo()
    with DeskGenerator("qwen-image-edit", **options) as gen:
        result = gen.generate(prompt=INSTRUCTION, image=photo, seed=7, steps=steps, **size)
        print(result.mode, result.images[0].size, f"{result.timings.total:.1f} s")
        result.save(args.out)
        lamp = result.images[0].crop((0, 0, 48, 48))  # any picture of a lamp will do
        with_lamp = gen.generate(
            prompt="put the lamp from the second image on the left of the desk",
            image=photo,
            references=[lamp],
            negative_prompt=" ",  # true_cfg_scale guides only against a negative prompt
            guidance_scale=4.0,
            seed=7,
            steps=steps,
            **size,
        )
        print("references:", with_lamp.request.reference_sha256)
        print(gen.describe(photo).summary)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
