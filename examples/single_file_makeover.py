"""A desk makeover from a single-file checkpoint (one ``.safetensors`` file in the original
layout, as civitai shares fine-tunes): the family read from the file's header, the configs
deskgen ships for it (or ``--config``), img2img on the desk photo.

Offline by default: a tiny random-weight SDXL checkpoint converted in-process from the tiny
diffusers pipeline (the images are noise; the header reading, the loading and the makeover are
real), loaded next to that diffusers folder to show both give the same image. With a real
checkpoint on a GPU:

    python examples/single_file_makeover.py --photo my-desk.jpg \
        --model ~/models/juggernautXL.safetensors --backend sdxl
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from deskgen import DeskGenerator
from deskgen.backends.diffusers._single_file import detect_family, single_file_parameters
from deskgen.demo import DEMO_NEGATIVE_PROMPT, sample_desk_photo
from deskgen.testing import make_tiny_single_file

PROMPT = "a tidy minimalist desk, hidden cables, warm desk lamp, plants, photo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photo", default=str(sample_desk_photo()), help="your desk photo")
    parser.add_argument("--model", help="a .safetensors checkpoint (default: a tiny offline one)")
    parser.add_argument("--backend", default="sdxl", help="sdxl or sd")
    parser.add_argument("--config", help="a local diffusers folder with the model's configs")
    parser.add_argument("--out", default="single-file-makeover.png")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="deskgen-single-file-") as scratch:
        folder = None
        if args.model:
            model, config, steps = Path(args.model).expanduser(), args.config, 30
        else:  # the tiny SDXL in the original layout, and the diffusers folder it came from
            folder = Path(scratch) / "tiny-sdxl"
            model = make_tiny_single_file(
                "sdxl", Path(scratch) / "tiny-sdxl.safetensors", diffusers_path=folder
            )
            config, steps = str(folder), 12
        family = detect_family(model)  # the header only: nothing is loaded yet
        sizes = ", ".join(
            f"{k} {v / 1e6:.2f}M" for k, v in sorted(single_file_parameters(model).items())
        )
        print(f"{model.name}: {family.label} checkpoint ({sizes} parameters)")

        request: dict[str, Any] = {
            "prompt": PROMPT,
            "negative_prompt": DEMO_NEGATIVE_PROMPT,
            "image": args.photo,
            "strength": 0.6,
            "steps": steps,
            "seed": 42,
        }
        options = {"config": config} if config else {}
        with DeskGenerator(args.backend, model=str(model), **options) as gen:
            result = gen.generate(**request)
        paths = result.save(args.out)
        print(f"{result.mode}, {result.denoising_steps} steps, seed {result.seeds[0]}: {paths[0]}")
        if folder is not None:  # the same weights in the diffusers layout: the same image
            with DeskGenerator(args.backend, model=str(folder)) as gen:
                same = gen.generate(**request)
            equal = np.array_equal(np.asarray(result.image), np.asarray(same.image))
            print(f"identical to the diffusers folder: {equal}")


if __name__ == "__main__":
    main()
