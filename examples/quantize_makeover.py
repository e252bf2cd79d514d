"""A desk makeover on a quantized model: quantize at load (optimum-quanto and torchao, int8),
read the memory report, save the quantized model, load it back and get the same image.

Offline by default: the tiny random-weight SDXL of `deskgen demo` (the images are noise, the
sizes are a tiny model's; loading, quantizing, the report, saving and reloading are real).
With real weights on a GPU (``pip install "deskgen[quanto,torchao]"``):

    python examples/quantize_makeover.py --photo my-desk.jpg \
        --model stabilityai/stable-diffusion-xl-base-1.0 --save-to ./sdxl-int8

``--save-to DIR`` keeps the quantized models (``DIR/quanto``, ``DIR/torchao``; new folders);
without it they go to a temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from deskgen import DeskGenerator, GenerationResult, MemoryReport, QuantConfig
from deskgen.demo import DEMO_NEGATIVE_PROMPT, sample_desk_photo, tiny_model
from deskgen.quant import save_quantized

PROMPT = "a tidy minimalist desk, hidden cables, warm desk lamp, plants, photo"


def _pixels(result: GenerationResult) -> np.ndarray[Any, np.dtype[np.int16]]:
    return np.asarray(result.image, dtype=np.int16)


def _print_report(report: MemoryReport) -> None:
    for name, part in sorted(report.components.items()):
        if part.bytes_before is not None and part.ratio is not None:  # quantized at this load
            print(
                f"  {name}: {part.bytes_before / 2**20:.2f} MiB -> {part.bytes / 2**20:.2f} MiB "
                f"({part.quantization}, {part.ratio:.2f}x smaller)"
            )
        elif part.quantization is not None:  # loaded quantized from a saved folder
            print(f"  {name}: {part.bytes / 2**20:.2f} MiB ({part.quantization}, as saved)")
    print(f"  all weights: {report.total_bytes / 2**20:.2f} MiB")
    if report.load_peak is not None:
        print(f"  load peak: {report.load_peak.gib:.2f} GiB ({report.load_peak.kind})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photo", default=str(sample_desk_photo()), help="your desk photo")
    parser.add_argument("--model", help="hub id or folder (default: a tiny offline model)")
    parser.add_argument("--backend", default="sdxl", help="sdxl or sd")
    parser.add_argument("--save-to", help="keep the quantized models in this new folder")
    parser.add_argument("--out", default="quantize-makeover.png")
    args = parser.parse_args()

    model, steps = (args.model, 30) if args.model else (str(tiny_model(args.backend)), 12)
    request: dict[str, Any] = {
        "prompt": PROMPT,
        "negative_prompt": DEMO_NEGATIVE_PROMPT,
        "image": args.photo,
        "strength": 0.6,
        "steps": steps,
        "seed": 42,
    }
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="deskgen-quantized-") as scratch:
        saved_root = Path(args.save_to) if args.save_to else Path(scratch)

        # the reference: the same request in full precision
        with DeskGenerator(args.backend, model=model) as gen:
            full = gen.generate(**request)
            full.save(out.with_name(f"{out.stem}-full.png"))
            print(f"full precision: {gen.memory_report().total_bytes / 2**20:.2f} MiB of weights")

        configs = [
            QuantConfig(method="quanto", weights="int8"),  # linear and conv layers of the UNet
            QuantConfig(method="torchao", weights="int8"),  # linear layers only
        ]
        for config in configs:
            label = f"{config.method} {config.weights}"
            # each component to quantize is read in full precision, quantized, then the next
            with DeskGenerator(args.backend, model=model, quantization=config) as gen:
                print(f"{label}, quantized at load:")
                _print_report(gen.memory_report())
                result = gen.generate(**request)
                change = np.abs(_pixels(result) - _pixels(full)).mean()
                print(f"  vs full precision: mean pixel difference {change:.2f}")
                folder = save_quantized(gen, saved_root / config.method)
                dtype = gen.dtype  # a saved quantized model loads in the dtype it was saved in
            print(f"  saved to {folder}")

            # a service restarting: the folder loads quantized, no quantization=... needed
            with DeskGenerator(args.backend, model=str(folder), dtype=dtype) as again:
                print(f"{label}, reloaded:")
                _print_report(again.memory_report())
                reloaded = again.generate(**request)
            same = np.array_equal(_pixels(reloaded), _pixels(result))
            print(f"  identical image after reload: {same}")
            [path] = reloaded.save(out.with_name(f"{out.stem}-{config.method}.png"))
            print(f"  wrote {path}")


if __name__ == "__main__":
    main()
