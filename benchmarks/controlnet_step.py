"""Cost of a denoising step with ControlNets against a plain SDXL step, as ratios.

One tiny SDXL (random weights, loaded from disk) runs text-to-image through ``sdxl`` and
through ``sdxl-controlnet`` with one ControlNet (canny) and two (canny + depth), at the same
size, steps and seed; the ControlNet requests take the photo as control only (``strength=1``),
so all three run the same number of steps from noise. A step's cost is the denoising time over
the steps run (`GenerationResult.timings`); the control images' cost (OpenCV Canny, the tiny
depth model) is reported on its own. A ControlNet is a copy of the UNet's encoder half, so
expect roughly 1.3-1.6x per ControlNet-step on real weights.

    .venv/bin/python benchmarks/controlnet_step.py [--steps 10] [--repeats 7] [--sample-size 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sample-size", type=int, default=64, help="latent size (image: 2x)")
    args = parser.parse_args()

    import torch

    from deskgen import DeskGenerator, GenerationResult
    from deskgen.demo import sample_desk_photo
    from deskgen.testing import make_tiny_controlnet, make_tiny_depth_model, make_tiny_pipeline

    folder = Path(tempfile.mkdtemp(prefix="deskgen-bench-"))
    size = args.sample_size
    base = str(make_tiny_pipeline("sdxl", folder / "sdxl", sample_size=size))
    canny = str(make_tiny_controlnet(folder / "canny", seed=1, sample_size=size))
    depth = str(make_tiny_controlnet(folder / "depth", seed=2, sample_size=size))
    depth_model = str(make_tiny_depth_model(folder / "depth-model"))
    photo = sample_desk_photo()
    side = 2 * size
    common = {"prompt": "a tidy desk", "steps": args.steps, "seed": 1, "width": side}
    common["height"] = side

    cases = {
        "sdxl": (DeskGenerator("sdxl", model=base, device="cpu"), {}),
        "+1 ControlNet": (
            DeskGenerator(
                "sdxl-controlnet", model=base, controlnet=canny, control="canny", device="cpu"
            ),
            {"image": photo, "strength": 1.0},
        ),
        "+2 ControlNets": (
            DeskGenerator(
                "sdxl-controlnet",
                model=base,
                controlnet=[canny, depth],
                control=["canny", "depth"],
                depth_model=depth_model,
                device="cpu",
            ),
            {"image": photo, "strength": 1.0},
        ),
    }
    step_ms: dict[str, list[float]] = {name: [] for name in cases}
    control_ms: dict[str, list[float]] = {name: [] for name in cases}
    for gen, extra in cases.values():  # warm-up
        gen.generate(**common, **extra)  # type: ignore[arg-type]
    for _ in range(args.repeats):
        for name, (gen, extra) in cases.items():  # interleaved: drift hits every case alike
            result: GenerationResult = gen.generate(**common, **extra)  # type: ignore[arg-type]
            assert result.mode == "txt2img" and result.denoising_steps == args.steps
            step_ms[name].append(result.timings.denoise / result.denoising_steps * 1000)
            control_ms[name].append(result.timings.control * 1000)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, tiny SDXL at "
        f"{side}x{side}, {args.steps} steps, median of {args.repeats}"
    )
    print(f"{'case':<15} {'ms/step':>8} {'ratio':>6} {'controls ms':>12}")
    plain = statistics.median(step_ms["sdxl"])
    for name in cases:
        step = statistics.median(step_ms[name])
        control = statistics.median(control_ms[name])
        print(f"{name:<15} {step:>8.2f} {step / plain:>6.2f} {control:>12.2f}")
    for gen, _ in cases.values():
        gen.close()


if __name__ == "__main__":
    main()
