"""GGUF denoisers on the CPU: what each quant type really holds against its ideal, and how far it
moves the image, on the tiny Qwen-Image-Edit and SDXL models.

For each quant type the gguf package writes (`deskgen.testing.make_tiny_gguf`: linear weights
in blocks, 1-D tensors F32, the rest F16, as city96's converter does), the denoiser is loaded
through ``QuantConfig(method="gguf", file=...)`` and compared with the unquantized generator:

- bytes: the memory report's (`deskgen.quant.module_bytes`, diffusers' uint8 blocks as they
  are) against the ideal from the file's types alone (a Q8_0 block is 34 bytes for 32 weights,
  Q5_1 24, Q5_0 22, Q4_1 20, Q4_0 18; F32/F16 tensors as float32 once loaded), and the
  bytes a quantized weight takes;
- PSNR (dB) of the image against the unquantized one at the same seed, and the median step
  time as a ratio (the blocks are dequantized layer by layer as they run).

The tiny models' images are noise: the figures say how far quantization moves the pixels, not
how good a desk looks. It also prints bitsandbytes' bytes a weight on one 3072-wide layer
quantized by its CPU kernels (loading whole pipelines with bitsandbytes needs a CUDA GPU).

    .venv/bin/python benchmarks/gguf_fidelity.py [--steps 4] [--quants Q8_0 Q4_0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

QUANTS = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")


def psnr(a: Any, b: Any) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ideal_bytes(path: Path, width: int = 4) -> tuple[int, int, int]:
    """(ideal bytes loaded, quantized weights, their bytes) from the file's types alone."""
    import gguf

    ideal = weights = stored = 0
    for tensor in gguf.GGUFReader(path).tensors:
        kind = tensor.tensor_type
        if kind.name in ("F32", "F16"):
            ideal += int(tensor.n_elements) * width
            continue
        block, size = gguf.GGML_QUANT_SIZES[kind]
        ideal += int(tensor.n_elements) // block * size
        weights += int(tensor.n_elements)
        stored += int(tensor.n_bytes)
    return ideal, weights, stored


def _request(kind: str, steps: int) -> dict[str, Any]:
    from PIL import Image, ImageDraw

    request: dict[str, Any] = {"prompt": "a tidy desk with a lamp", "seed": 3, "steps": steps}
    if kind == "qwen-image-edit":
        photo = Image.new("RGB", (96, 72), (200, 190, 170))
        ImageDraw.Draw(photo).rectangle([28, 10, 68, 36], fill=(20, 20, 30))
        request.update(image=photo, width=64, height=48)
    return request


def measure(kind: str, model: Path, root: Path, quants: list[str], steps: int) -> list[Any]:
    import numpy as np

    from deskgen import DeskGenerator, QuantConfig
    from deskgen.testing import make_tiny_gguf

    def generate(gen: DeskGenerator) -> tuple[Any, float]:
        gen.generate(**_request(kind, 2))  # warm-up
        times = []
        image = None
        for _ in range(3):
            started = time.perf_counter()
            image = gen.generate(**_request(kind, steps)).image
            times.append((time.perf_counter() - started) / steps)
        return np.asarray(image), statistics.median(times)

    with DeskGenerator(kind, model=str(model), device="cpu") as gen:
        denoiser = gen.backend.denoiser  # type: ignore[attr-defined]
        base, base_step = generate(gen)
        full = gen.memory_report().components[denoiser].bytes
    rows = []
    for quant in quants:
        path = make_tiny_gguf(model, root / f"{kind}-{quant}.gguf", quant=quant)  # type: ignore[arg-type]
        config = QuantConfig(method="gguf", file=str(path))
        with DeskGenerator(kind, model=str(model), device="cpu", quantization=config) as gen:
            report = gen.memory_report().components[denoiser]
            pixels, step = generate(gen)
        ideal, weights, stored = ideal_bytes(path)
        rows.append(
            {
                "model": kind,
                "quant": quant,
                "bytes": report.bytes,
                "ideal_bytes": ideal,
                "over_ideal": round(report.bytes / ideal - 1, 5),
                "unquantized_bytes": full,
                "smaller": round(full / report.bytes, 2),
                "quantized_share": round(weights / (full / 4), 3),
                "bytes_per_quantized_weight": round(stored / weights, 4),
                "psnr_db": round(psnr(pixels, base), 2),
                "step_ratio": round(step / base_step, 2),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def bitsandbytes_bytes() -> dict[str, float]:
    try:
        import bitsandbytes as bnb
    except ImportError:
        return {}
    import torch

    from deskgen.quant import module_bytes

    found = {}
    for weights in ("nf4", "fp4", "int8"):
        layer: Any = (
            bnb.nn.Linear8bitLt(3072, 256, bias=False, has_fp16_weights=False)
            if weights == "int8"
            else bnb.nn.Linear4bit(3072, 256, bias=False, quant_type=weights)
        )
        try:
            layer = layer.to("cpu")
        except (RuntimeError, NotImplementedError):
            return found
        found[weights] = round(module_bytes(layer) / (3072 * 256), 4)
    del torch
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--quants", nargs="+", default=list(QUANTS), choices=QUANTS)
    args = parser.parse_args()
    from deskgen.testing import make_tiny_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = []
        for kind in ("qwen-image-edit", "sdxl"):
            model = make_tiny_pipeline(kind, root / kind)  # type: ignore[arg-type]
            rows += measure(kind, model, root, args.quants, args.steps)
    print(
        json.dumps({"gguf": rows, "bitsandbytes_bytes_per_weight": bitsandbytes_bytes()}, indent=2)
    )


if __name__ == "__main__":
    main()
