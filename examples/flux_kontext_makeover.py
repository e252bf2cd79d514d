"""Edit the desk photo by instruction with FLUX.1 Kontext: the room stays the room.

The photo goes in with an instruction that says what changes and what stays. ``guidance_scale``
is Kontext's distilled guidance (one pass per step); ``true_cfg_scale`` with a negative prompt
adds real classifier-free guidance (two passes per step). A long description is read whole by
T5 (512 tokens); CLIP gives only a pooled vector from its first 77 tokens, as the report says.

Offline by default: tiny random-weight FLUX.1 Kontext weights built into the deskgen cache (the
images are noise). With real weights on a GPU (about 34 GB of bf16 weights; the 24 GB setup
below quantizes the transformer and T5 to int8):

    python examples/flux_kontext_makeover.py --real
"""

from __future__ import annotations

import argparse
from typing import Any

from deskgen import DeskGenerator, QuantConfig
from deskgen.demo import LONG_DESCRIPTION, sample_desk_photo, tiny_model

INSTRUCTION = (
    "make this desk tidy and minimalist: hide the cables, add a warm lamp; keep the window, "
    "the wall and the monitor"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--real", action="store_true", help="FLUX.1-Kontext-dev on a GPU")
    parser.add_argument("--out", default="flux-kontext-makeover.png")
    args = parser.parse_args()

    if args.real:
        options: dict[str, Any] = {
            "model": "black-forest-labs/FLUX.1-Kontext-dev",
            "quantization": QuantConfig(
                weights="int8", components=("transformer", "text_encoder_2")
            ),
        }
        size: dict[str, int] = {}
        steps = 28
    else:
        options = {"model": str(tiny_model("flux-kontext")), "device": "cpu"}
        size = {"width": 128, "height": 96}  # tiny model: keep the output small
        steps = 4
    photo = sample_desk_photo()
    with DeskGenerator("flux-kontext", **options) as gen:
        result = gen.generate(prompt=INSTRUCTION, image=photo, seed=7, steps=steps, **size)
        print(result.mode, result.images[0].size, f"{result.timings.total:.1f} s")
        result.save(args.out)
        guided = gen.generate(
            prompt=INSTRUCTION,
            negative_prompt="clutter, tangled cables",
            true_cfg_scale=1.5,  # real guidance against the negative prompt: twice the time
            image=photo,
            seed=7,
            steps=steps,
            **size,
        )
        print("true_cfg_scale:", guided.request.true_cfg_scale)
        report = gen.check_prompt(prompt=f"{INSTRUCTION}. {LONG_DESCRIPTION}")
        for encoder in report.encoders:
            print(f"{encoder.encoder}: {encoder.tokens} of {encoder.limit} tokens")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
