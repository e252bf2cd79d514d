"""``deskgen quantize`` (save a model quantized) and ``deskgen plan`` (the memory planner)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from .._exceptions import ConfigError
from ._options import Subparsers, _checked_options, _parse_options


def register(sub: Subparsers) -> None:
    """Add ``quantize`` and ``plan``."""
    quant = sub.add_parser(
        "quantize",
        help="quantize a model's components and save it, to load quantized later",
        description=(
            "Load MODEL with its components quantized (optimum-quanto or torchao), print what "
            "each component holds before and after, and save the pipeline to --out; "
            "`deskgen generate --model OUT` (and DeskGenerator(model=OUT)) then load it "
            "quantized, with the same outputs."
        ),
    )
    quant.add_argument("model", help="hub id or local folder of the model to quantize")
    quant.add_argument("--backend", default="sdxl", help="sdxl, sd or sdxl-controlnet")
    quant.add_argument("--method", choices=["quanto", "torchao"], default="torchao")
    quant.add_argument("--weights", choices=["int8", "int4", "fp8"], default="int8")
    quant.add_argument("--activations", choices=["int8"], help="torchao: dynamic int8")
    quant.add_argument(
        "--component",
        action="append",
        help="a component to quantize, e.g. unet, text_encoder_2 (repeatable; default: unet)",
    )
    quant.add_argument(
        "--exclude", action="append", default=[], help="module name pattern to keep as is"
    )
    quant.add_argument(
        "--group-size", type=int, help="int4: weights per scale (default: the library's, 128)"
    )
    quant.add_argument("--out", required=True, help="folder for the quantized model (new)")
    quant.add_argument("--device", default="cpu", help="where to quantize (default: cpu)")
    quant.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "float16", "bfloat16"],
        help="weight dtype; load the saved model with the same",
    )
    quant.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="a backend option"
    )
    quant.add_argument("--verbose", action="store_true", help="show the libraries' chatter")
    quant.set_defaults(handler=_cmd_quantize, quiet_libraries="all")

    plan = sub.add_parser(
        "plan",
        help="show how a model would be loaded in the memory at hand (the memory planner)",
        description=(
            "Read the model's component sizes (its safetensors headers, or the published sizes "
            "of the backend's default model), take the free GPU memory (or available RAM, or "
            "--budget) and print the dtype, quantization, offload and VAE tiling that "
            "DeskGenerator(..., memory=MODE) would use. Nothing is loaded. The backend is the "
            "one the model's model_index.json names (a folder or the Hugging Face cache), or "
            "that of a model deskgen knows by name; with --budget the device need not be here "
            "(--device cuda --budget 16GB plans for a 16 GB card on any machine)."
        ),
    )
    plan.add_argument("model", nargs="?", help="hub id or local folder (default: the backend's)")
    plan.add_argument(
        "--backend",
        help="sdxl, sd, sdxl-controlnet or hidream (default: inferred from the model; sdxl "
        "without one)",
    )
    plan.add_argument("--model", dest="model_flag", metavar="MODEL", help="the same as MODEL")
    plan.add_argument("--memory", choices=["auto", "low", "balanced", "max-speed"], default="auto")
    plan.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    plan.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    plan.add_argument(
        "--budget",
        "--budget-gb",
        dest="budget",
        type=_memory_size,
        metavar="SIZE",
        help="plan for this much memory instead of what is free, e.g. 16GB, 24GiB, 12 (GiB; "
        "GB and GiB both mean 2^30 bytes: cards are sold by GiB), 512MB",
    )
    plan.add_argument(
        "--method",
        choices=["quanto", "torchao", "bitsandbytes"],
        default="torchao",
        help="the library the plan quantizes with (bitsandbytes: int8, then nf4, on CUDA GPUs)",
    )
    plan.add_argument(
        "--gguf",
        metavar="FILE",
        help="plan with the denoiser read from this GGUF file (a path, or a hub file "
        "owner/repo/name.gguf in the cache), sized from its header",
    )
    plan.add_argument(
        "--controlnet", action="append", help="sdxl-controlnet: a ControlNet (repeatable)"
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(handler=_cmd_plan, quiet_libraries=None)


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .._generator import DeskGenerator
    from ..quant import QuantConfig, save_quantized

    config = QuantConfig(
        method=args.method,
        weights=args.weights,
        activations=args.activations,
        components=tuple(args.component) if args.component else None,
        exclude=tuple(args.exclude),
        group_size=args.group_size,
    )
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{args.out!r} is not empty: save the quantized model to a new folder.")
    options = _checked_options(
        args.backend, args.model, args.device, args.dtype, _parse_options(args.option)
    )
    print(f"Loading {args.backend} ({args.model}), quantizing...", file=sys.stderr)
    with DeskGenerator(
        args.backend,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        quantization=config,
        **options,
    ) as gen:
        report = gen.memory_report()
        save_quantized(gen, out)
        dtype = gen.dtype
    for name, part in sorted(report.components.items()):
        if part.bytes_before is not None:
            print(
                f"{name}: {part.bytes_before / 2**20:.1f} MiB -> {part.bytes / 2**20:.1f} MiB "
                f"({part.quantization}, {part.ratio:.2f}x smaller)"
            )
    print(f"wrote {out} (load it with dtype={dtype!r})")
    return 0


_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([KMGT])(?:i?B)?)?\s*$", re.IGNORECASE)


def _memory_size(text: str) -> int:
    """``16GB``, ``24GiB``, ``512MB``, ``12`` (GiB) as bytes; decimal and binary units alike
    are powers of 1024, as memory is sold."""
    match = _SIZE.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a memory size: write e.g. 16GB, 24GiB, 512MB or 12 (GiB)"
        )
    unit = (match.group(2) or "G").upper()
    return int(float(match.group(1)) * 1024 ** "KMGT".index(unit) * 1024)


def _cmd_plan(args: argparse.Namespace) -> int:
    from .._planner import plan_memory

    if args.model and args.model_flag and args.model != args.model_flag:
        raise ConfigError(f"Two models: {args.model!r} and --model {args.model_flag!r}.")
    extra: dict[str, Any] = {"controlnet": args.controlnet} if args.controlnet else {}
    if args.gguf:
        from pydantic import ValidationError

        from ..quant import QuantConfig

        try:
            extra["quantization"] = QuantConfig(method="gguf", file=args.gguf)
        except ValidationError as exc:
            raise ConfigError(f"--gguf {args.gguf!r}: {exc.errors()[0]['msg']}.") from exc
    plan = plan_memory(
        args.backend,
        model=args.model if args.model is not None else args.model_flag,
        mode=args.memory,
        device=args.device,
        dtype=args.dtype,
        budget_bytes=args.budget,
        method=args.method,
        **extra,
    )
    print(plan.model_dump_json(indent=2) if args.json else plan.summary())
    return 0 if plan.fits else 1
