"""A desk makeover with deskgen's Python API.

Offline by default: it builds a tiny random-weight SDXL (the images are noise, every step of
the path is real). Point it at real weights on a GPU for real makeovers:

    python examples/makeover.py --photo my-desk.jpg \
        --model stabilityai/stable-diffusion-xl-base-1.0 --out makeover.png
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from deskgen import DeskGenerator, StepProgress, read_record
from deskgen.demo import DEMO_NEGATIVE_PROMPT, sample_desk_photo, tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photo", default=str(sample_desk_photo()), help="your desk photo")
    parser.add_argument("--model", help="hub id or folder (default: a tiny offline model)")
    parser.add_argument("--backend", default="sdxl")
    parser.add_argument("--out", default="makeover.png")
    args = parser.parse_args()

    model = args.model or str(tiny_model(args.backend))
    stop = threading.Event()  # set() it from another thread to cancel between steps

    def progress(p: StepProgress) -> None:
        print(f"\rstep {p.step}/{p.total_steps} ({p.elapsed:.1f} s)", end="", flush=True)

    with DeskGenerator(args.backend, model=model, device="auto", dtype="auto") as gen:
        result = gen.generate(
            prompt="a tidy minimalist desk, hidden cables, warm desk lamp, plants, photo",
            negative_prompt=DEMO_NEGATIVE_PROMPT,
            image=args.photo,
            strength=0.6,
            steps=30 if args.model else 12,
            seed=42,
            num_images=2,
            on_step=progress,
            cancel=stop,
        )
    print()
    paths = result.save(args.out)
    print(f"{result.mode} {result.width}x{result.height} seeds {result.seeds}")
    print(f"timings: {result.timings.model_dump()}")
    print(f"peak memory: {result.peak_memory.gib:.2f} GiB ({result.peak_memory.kind})")
    request = read_record(paths[1])  # everything needed to make the second image again
    print(f"wrote {', '.join(str(p) for p in paths)}; replay seed {request.seed}")
    assert all(Path(p).is_file() for p in paths)


if __name__ == "__main__":
    main()
