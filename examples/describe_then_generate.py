"""The seed team's Janus workflow: describe the desk photo, write a prompt from it, generate.

Offline by default: a tiny random Janus describes the photo (its words are noise) and a tiny
random SDXL draws the makeover; every step is the real code path. With real weights on a GPU:

    python examples/describe_then_generate.py --photo my-desk.jpg --real
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deskgen import DeskGenerator
from deskgen.demo import cache_dir, sample_desk_photo, tiny_model
from deskgen.testing import make_tiny_janus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photo", default=str(sample_desk_photo()), help="your desk photo")
    parser.add_argument("--real", action="store_true", help="Janus-Pro-7B and SDXL base")
    parser.add_argument("--out", default="described-makeover.png")
    args = parser.parse_args()

    janus_model = None if args.real else str(make_tiny_janus(cache_dir() / "tiny-janus-demo"))
    sdxl_model = None if args.real else str(tiny_model("sdxl"))

    # 1. describe: the seed's "explain details", in Janus' words and as fields
    with DeskGenerator("janus", model=janus_model) as janus:
        description = janus.describe(args.photo, instruction="explain details")
        print(f"Janus says: {description.text[:200]}")
        print(f"clutter: {description.clutter}; keep: {description.keep[:3]}")

        # 2. a prompt from the description, within SDXL's 77-token budget
        rendered = description.to_spec(style="minimalist scandinavian").render(backend="sdxl")
        print(f"prompt ({rendered.tokens}/{rendered.budget} CLIP tokens): {rendered.prompt[:120]}")

        # Janus can draw from it too (its own size, text only)
        drawn = janus.generate(prompt=rendered.prompt, seed=7)
        print(f"janus drew {drawn.width}x{drawn.height} in {drawn.timings.total:.2f} s")

    # 3. generate the makeover from the photo with SDXL
    with DeskGenerator("sdxl", model=sdxl_model) as sdxl:
        result = sdxl.generate(
            rendered.request(image=args.photo, seed=42, steps=30 if args.real else 8)
        )
    [path] = result.save(Path(args.out))
    print(f"sdxl {result.mode} {result.width}x{result.height}: wrote {path}")


if __name__ == "__main__":
    main()
