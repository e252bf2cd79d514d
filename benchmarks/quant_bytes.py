"""What quantization really saves on SDXL's UNet, against the ideal.

A UNet of SDXL base 1.0's exact architecture (random weights in bfloat16: 2.567 B parameters,
no download) is quantized with each method and weight type through `deskgen.quant`; its bytes
(`module_bytes`: quantized tensors counted by the data and scales they hold) are compared with
the ideal: every quantized weight at 1 byte (int8, fp8) or half a byte (int4), everything else as
it was. Goal: within 5% of the ideal (the rest is scales and zero points).

    .venv/bin/python benchmarks/quant_bytes.py [--device cpu]   # ~8 GB of RAM, a few minutes
    python benchmarks/quant_bytes.py --device cuda              # also torchao int4 where it can
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

BITS = {"int8": 8, "fp8": 8, "int4": 4}


def build_unet(device: str) -> Any:
    import torch
    from diffusers import UNet2DConditionModel
    from lora_step import SDXL_UNET  # type: ignore[import-not-found]

    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bfloat16: no float32 copy at any time
    try:
        with torch.device(device):
            return UNet2DConditionModel(**SDXL_UNET).eval()
    finally:
        torch.set_default_dtype(default)


def quantized_weight_elements(unet: Any) -> int:
    """Elements of the weights that were quantized (quanto's modules, torchao's tensors)."""
    import torch

    total = 0
    for module in unet.modules():
        weight = getattr(module, "weight", None)
        if weight is None:
            continue
        quanto = type(module).__name__.startswith("Q") and hasattr(module, "weight_qtype")
        torchao = type(weight) not in (torch.Tensor, torch.nn.Parameter)
        if quanto or torchao:
            total += weight.numel()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=["int8", "int4", "fp8"], help="one weight type")
    args = parser.parse_args()
    import torch

    from deskgen.quant import module_bytes, quantize_weights

    unet = build_unet(args.device)
    params = sum(p.numel() for p in unet.parameters())
    linear = sum(m.weight.numel() for m in unet.modules() if isinstance(m, torch.nn.Linear))
    before = module_bytes(unet)
    results: dict[str, Any] = {
        "parameters": params,
        "share in Linear weights": round(linear / params, 3),
        "bf16 bytes": before,
        "cases": {},
    }
    del unet
    cases: list[tuple[str, str, int | None]] = [
        ("quanto", "int8", None),
        ("quanto", "int4", None),
        ("quanto", "int4", 320),
        ("quanto", "fp8", None),
        ("torchao", "int8", None),
        ("torchao", "fp8", None),
        ("torchao", "int4", None),
    ]
    if args.only:
        cases = [c for c in cases if c[1] == args.only]
    for method, weights, group in cases:
        label = f"{method} {weights}" + (f" group {group}" if group else "")
        unet = build_unet(args.device)
        started = time.perf_counter()
        try:
            quantize_weights(unet, weights=weights, backend=method, group_size=group)  # type: ignore[arg-type]
        except Exception as exc:  # e.g. torchao int4 without its CUDA kernels
            results["cases"][label] = f"refused: {type(exc).__name__}: {exc}"[:200]
            del unet
            continue
        seconds = time.perf_counter() - started
        after = module_bytes(unet)
        quantized = quantized_weight_elements(unet)
        ideal = before - quantized * 2 + quantized * BITS[weights] // 8
        results["cases"][label] = {
            "bytes": after,
            "ideal bytes": ideal,
            "over ideal": round(after / ideal - 1, 4),
            "smaller than bf16": round(before / after, 2),
            "quantized share of parameters": round(quantized / params, 3),
            "quantize s": round(seconds, 1),
            "goal (<= 5% over ideal)": "PASS" if after <= 1.05 * ideal else "FAIL",
        }
        del unet
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
