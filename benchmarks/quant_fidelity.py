"""Quantized against unquantized: PSNR and SSIM of the images at the same seeds, and the speed of
a denoising step, as ratios, on the tiny SDXL on the CPU.

Each case quantizes the UNet as it loads (`QuantConfig`), generates the same requests as the
unquantized generator, and compares the images (PSNR in dB, SSIM on the luminance with an 8x8
uniform window) and the median denoising time per step. The tiny model's images are noise, so
the fidelity figures say how far quantization moves the pixels, not how good a desk looks; on
real weights run it with ``--model``.

    .venv/bin/python benchmarks/quant_fidelity.py [--steps 8] [--repeats 5] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def psnr(a: Any, b: Any) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def ssim(a: Any, b: Any, window: int = 8) -> float:
    """Mean SSIM of the luminance over ``window`` x ``window`` blocks (Wang et al. 2004)."""
    import numpy as np

    def luma(x: Any) -> Any:
        x = x.astype(np.float64)
        return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]

    x, y = luma(a), luma(b)
    h, w = (x.shape[0] // window) * window, (x.shape[1] // window) * window
    x = x[:h, :w].reshape(h // window, window, w // window, window)
    y = y[:h, :w].reshape(h // window, window, w // window, window)
    mx, my = x.mean(axis=(1, 3)), y.mean(axis=(1, 3))
    vx, vy = x.var(axis=(1, 3)), y.var(axis=(1, 3))
    cov = ((x - mx[:, None, :, None]) * (y - my[:, None, :, None])).mean(axis=(1, 3))
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    value = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(value.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", help="an SDXL folder or hub id (default: the tiny SDXL)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import numpy as np

    from deskgen import DeskGenerator, QuantConfig
    from deskgen.testing import make_tiny_pipeline

    model = args.model or str(
        make_tiny_pipeline("sdxl", Path(tempfile.mkdtemp()) / "sdxl", sample_size=64)
    )
    cases: dict[str, QuantConfig | None] = {
        "unquantized": None,
        "quanto int8": QuantConfig(method="quanto", weights="int8"),
        "quanto int4": QuantConfig(method="quanto", weights="int4"),
        "quanto fp8": QuantConfig(method="quanto", weights="fp8"),
        "torchao int8": QuantConfig(method="torchao", weights="int8"),
        "torchao fp8": QuantConfig(method="torchao", weights="fp8"),
        "torchao int8 + int8 activations": QuantConfig(activations="int8"),
    }
    generators = {
        name: DeskGenerator("sdxl", model=model, device=args.device, quantization=config)
        for name, config in cases.items()
    }
    prompts = ["a tidy desk", "a walnut desk with a lamp", "a white desk by a window"]
    images: dict[str, list[Any]] = {name: [] for name in cases}
    step: dict[str, list[float]] = {name: [] for name in cases}
    for gen in generators.values():  # warm-up
        gen.generate(prompt=prompts[0], steps=2, seed=0)
    for repeat in range(args.repeats):
        for name, gen in generators.items():
            result = gen.generate(prompt=prompts[repeat % 3], steps=args.steps, seed=repeat)
            step[name].append(result.timings.denoise / result.denoising_steps)
            images[name].append(np.asarray(result.image))
    base = statistics.median(step["unquantized"])
    report: dict[str, Any] = {}
    for name in cases:
        pairs = list(zip(images[name], images["unquantized"], strict=True))
        unet = generators[name].memory_report().components["unet"]
        report[name] = {
            "PSNR dB": round(statistics.mean(psnr(a, b) for a, b in pairs), 2),
            "SSIM": round(statistics.mean(ssim(a, b) for a, b in pairs), 4),
            "step ratio": round(statistics.median(step[name]) / base, 3),
            "UNet MiB": round(unet.bytes / 2**20, 2),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
