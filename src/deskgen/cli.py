"""The ``deskgen`` command line: generate, demo, prompt, describe, dataset, train-lora, quantize,
plan, bench, compare, backends, record.

Run ``deskgen --help`` or ``deskgen COMMAND --help``. Exit codes: 0 success, 1 a deskgen error
(its message says how to fix it), 2 bad command-line usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ._exceptions import ConfigError, DeskgenError, MissingDependencyError
from ._version import __version__

if TYPE_CHECKING:
    from ._models import GenerationResult

__all__ = ["main"]


def _add_model_options(parser: argparse.ArgumentParser, *, backend: str | None) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--backend",
        default=backend,
        help="backend name, see `deskgen backends`" + (f" (default: {backend})" if backend else ""),
    )
    group.add_argument(
        "--model", help="hub id or local folder (default: the backend's default model)"
    )
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    group.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "float16", "bfloat16"],
        help="weight dtype (default: auto)",
    )
    group.add_argument("--variant", help="weight variant to load, e.g. fp16")
    group.add_argument("--revision", help="hub branch, tag or commit")
    group.add_argument(
        "--vae", help="a VAE to use instead of the model's (hub id or folder), e.g. an fp16 fix"
    )
    group.add_argument("--cache-dir", help="Hugging Face cache folder to load from")
    group.add_argument(
        "--local-files-only", action="store_true", help="never contact the Hugging Face Hub"
    )
    group.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a backend option, e.g. quality=high for openai (repeatable)",
    )
    group.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also load pickle weights (.bin/.ckpt) and LoRAs; only for files you trust",
    )
    group.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:WEIGHT]",
        help="a LoRA .safetensors file (or hub REPO/FILE) to apply, with its weight "
        "(default 1.0), e.g. desk.safetensors:0.8 (repeatable; sd, sdxl, sdxl-controlnet)",
    )
    group.add_argument(
        "--fuse-loras", action="store_true", help="fuse the LoRAs into the weights: faster steps"
    )


def _add_request_options(parser: argparse.ArgumentParser, *, steps_help: str) -> None:
    group = parser.add_argument_group("request")
    group.add_argument("--image", help="the desk photo (img2img); omit for txt2img")
    group.add_argument(
        "--negative-prompt",
        help="what to keep out of the image: text or 'preset:NAME' (see `deskgen prompt --help`)",
    )
    _add_prompt_options(group)
    group.add_argument(
        "--strength",
        type=float,
        help="img2img: how far to move from the photo (default: the backend's, 0.6 for sdxl)",
    )
    group.add_argument("--steps", type=int, help=f"denoising steps ({steps_help})")
    group.add_argument(
        "--guidance-scale", type=float, help="classifier-free guidance (default: the backend's)"
    )
    group.add_argument("--seed", type=int, help="seed of the first image (default: random)")
    group.add_argument("--num-images", type=int, help="images to generate (default: 1)")
    group.add_argument("--width", type=int, help="output width (default: native or photo aspect)")
    group.add_argument("--height", type=int, help="output height")
    group.add_argument(
        "--control-image",
        action="append",
        default=[],
        metavar="PATH",
        help="sdxl-controlnet: a ready control image, one per control in order; 'auto' computes "
        "that one from the photo (repeatable)",
    )
    group.add_argument(
        "--control-scale",
        type=float,
        action="append",
        default=[],
        metavar="SCALE",
        help="sdxl-controlnet: conditioning scale, once for all controls or once per control",
    )


def _add_prompt_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--long-prompt",
        choices=["chunk", "fit", "truncate", "error"],
        help="prompts over a text encoder's limit: encode all in chunks (default for sd/sdxl), "
        "drop the last phrases, let the encoder cut them, or refuse",
    )
    group.add_argument(
        "--trigger-word",
        action="append",
        default=[],
        metavar="WORDS",
        help="LoRA trigger words to put at the front of the prompt (repeatable)",
    )
    group.add_argument(
        "--remove-word",
        action="append",
        default=[],
        metavar="WORDS",
        help="words to take out of the prompt, e.g. an unwanted trigger (repeatable)",
    )


def _add_output_options(parser: argparse.ArgumentParser, *, out: str) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--out", default=out, help=f"PNG to write (default: {out})")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    group.add_argument("--json", action="store_true", help="print the record as JSON")
    group.add_argument(
        "--save-controls",
        action="store_true",
        help="also write the control images used, beside the output (STEM-control-I-KIND.png)",
    )
    group.add_argument(
        "--verbose",
        action="store_true",
        help="show the warnings and loading bars of diffusers and transformers",
    )


# train-lora's flags: LoraTrainingConfig's fields (dest: the field name)
_TRAIN_FLAGS: list[tuple[str, Any, str]] = [
    ("--model", str, "base pipeline: hub id or folder (SDXL, SD 1.x/2.x)"),
    ("--data", str, "imagefolder with metadata.jsonl (file_name, caption)"),
    ("--out", str, "output folder"),
    ("--name", str, "LoRA file stem and adapter name (default: deskgen_lora)"),
    ("--rank", int, "LoRA rank (default: 16)"),
    ("--alpha", float, "LoRA alpha (default: the rank)"),
    ("--learning-rate", float, "learning rate (default: 1e-4)"),
    ("--text-encoder-learning-rate", float, "text encoders' learning rate"),
    ("--lr-scheduler", str, "constant, constant_with_warmup, linear, cosine..."),
    ("--lr-warmup-steps", int, "warm-up steps"),
    ("--max-steps", int, "optimizer steps in all (default: --epochs passes)"),
    ("--epochs", int, "passes over the data (default: 1)"),
    ("--batch-size", int, "images per batch (default: 1)"),
    ("--gradient-accumulation-steps", int, "batches per optimizer step (default: 1)"),
    ("--resolution", int, "training side in pixels (default: the model's native)"),
    ("--no-buckets", bool, "square crops instead of aspect-ratio buckets"),
    ("--random-crop", bool, "random instead of centre crops"),
    ("--random-flip", bool, "mirror half the images"),
    ("--seed", int, "seed (default: 0)"),
    ("--mixed-precision", str, "auto, no, fp16, bf16 (default: auto)"),
    ("--device", str, "auto, cpu, cuda, cuda:N (default: auto)"),
    ("--train-text-encoders", bool, "also train LoRAs of the CLIP text encoders"),
    ("--snr-gamma", float, "min-SNR loss weighting, e.g. 5.0"),
    ("--noise-offset", float, "noise offset, e.g. 0.05"),
    ("--trigger-word", list, "a trigger word recorded in the LoRA (repeatable)"),
    ("--gradient-checkpointing", bool, "less memory, slower steps"),
    ("--checkpoint-every", int, "steps between checkpoints (default: 500)"),
    ("--keep-checkpoints", int, "checkpoints to keep (default: 3)"),
    ("--no-resume", bool, "start over instead of resuming the latest checkpoint"),
    ("--target-module", list, "a UNet module to adapt (repeatable; default: to_q/k/v/out.0)"),
    ("--caption-column", str, "the metadata field holding captions (default: caption)"),
    ("--max-grad-norm", float, "gradient clipping (default: 1.0)"),
    ("--prediction-type", str, "epsilon or v_prediction (default: the model's)"),
    ("--variant", str, "weight variant, e.g. fp16"),
    ("--revision", str, "hub branch, tag or commit"),
    ("--local-files-only", bool, "never contact the Hugging Face Hub"),
    ("--vae", str, "a VAE to use instead of the model's"),
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deskgen",
        description="Turn a photo of a desk into a picture of an improved desk setup.",
    )
    parser.add_argument("--version", action="version", version=f"deskgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser(
        "generate",
        help="generate makeover images from a prompt (and a desk photo)",
        description="Generate makeover images: txt2img from PROMPT, img2img with --image.",
    )
    gen.add_argument("prompt", help="what the improved desk should look like")
    _add_model_options(gen, backend="sdxl")
    _add_request_options(gen, steps_help="default: the backend's, 30 for sdxl")
    _add_output_options(gen, out="makeover.png")

    demo = sub.add_parser(
        "demo",
        help="the whole makeover offline on a tiny model (or real weights with --model)",
        description=(
            "Run a makeover of the sample desk photo shipped with deskgen. With no --model it "
            "builds a tiny random-weight model of the backend (sdxl or sd) into the user cache "
            "on first use (no network, no GPU; the picture is noise, the path is the real one). "
            "With --model it runs the same makeover on real weights."
        ),
    )
    demo.add_argument("--prompt", help="override the demo prompt")
    _add_model_options(demo, backend="sdxl")
    _add_request_options(demo, steps_help="default: 20 on the tiny model, 30 with --model")
    _add_output_options(demo, out="deskgen-demo.png")

    prompt = sub.add_parser(
        "prompt",
        help="report how a backend's text encoders see a prompt, without loading a model",
        description=(
            "Count tokens per text encoder of a backend with the real tokenizers (CLIP's "
            "vocabulary ships with deskgen) and show the chunks, the limit and anything that "
            "would not be encoded. Negative presets: "
            + ", ".join(f"preset:{name}" for name in _preset_names())
            + ", preset:default (the backend's)."
        ),
    )
    prompt.add_argument("prompt", help="the prompt to check")
    prompt.add_argument("--backend", default="sdxl", help="backend name (default: sdxl)")
    prompt_group = prompt.add_argument_group("prompt")
    prompt_group.add_argument("--negative-prompt", help="text or 'preset:NAME'")
    _add_prompt_options(prompt_group)
    prompt.add_argument("--json", action="store_true", help="print the report as JSON")

    describe = sub.add_parser(
        "describe",
        help="describe a desk photo with a vision model and print a makeover prompt",
        description=(
            "Ask the backend's vision model to explain the details of a desk photo (the seed's "
            "describe-then-generate flow), then render a makeover prompt from the description "
            "for --for-backend."
        ),
    )
    describe.add_argument("image", help="the desk photo")
    _add_model_options(describe, backend="openai")
    describe.add_argument(
        "--for-backend", default="sdxl", help="render the makeover prompt for this backend"
    )
    describe.add_argument("--json", action="store_true", help="print the description as JSON")

    dataset = sub.add_parser(
        "dataset",
        help="generate a dataset of desk images (an imagefolder) for LoRA training",
        description=(
            "Generate images for every prompt of a plan into OUT/train/ with a metadata.jsonl "
            "(a Hugging Face imagefolder). Reruns skip finished images; failed ones are listed "
            "in OUT/failures.jsonl and retried by the next run."
        ),
    )
    source = dataset.add_argument_group("plan")
    source.add_argument(
        "--plan", help="a DatasetPlan as JSON (prompts, grid, images_per_prompt, request...)"
    )
    source.add_argument(
        "--prompt", action="append", default=[], help="a prompt to generate (repeatable)"
    )
    source.add_argument("--prompts-file", help="a text file of prompts, one per line")
    source.add_argument("--images-per-prompt", type=int, help="images of each prompt")
    source.add_argument("--seed", type=int, help="seed of each prompt's first image")
    source.add_argument(
        "--caption-prefix", help="put before every caption, e.g. the new LoRA's trigger word"
    )
    source.add_argument("--steps", type=int, help="denoising steps of every image")
    source.add_argument("--guidance-scale", type=float, help="guidance of every image")
    source.add_argument("--negative-prompt", help="negative prompt of every image")
    source.add_argument("--width", type=int, help="width of every image")
    source.add_argument("--height", type=int, help="height of every image")
    _add_model_options(dataset, backend="sdxl")
    dataset.add_argument("--out", required=True, help="the dataset folder")
    dataset.add_argument("--no-progress", action="store_true", help="no progress bar")
    dataset.add_argument("--verbose", action="store_true", help="show the libraries' chatter")

    train = sub.add_parser(
        "train-lora",
        help="train a LoRA of SDXL or SD on an imagefolder (e.g. from `deskgen dataset`)",
        description=(
            "Fine-tune a LoRA of the base model's UNet (and optionally its text encoders) on "
            "the images and captions of DATA, writing OUT/NAME.safetensors, OUT/loss.jsonl and "
            "checkpoints; a rerun resumes from the latest checkpoint. Flags override --config."
        ),
    )
    train.add_argument("--config", help="a LoraTrainingConfig as JSON")
    for flag, kind, text in _TRAIN_FLAGS:
        if kind is bool:
            train.add_argument(flag, action="store_true", default=None, help=text)
        elif kind is list:
            train.add_argument(flag, action="append", help=text)
        else:
            train.add_argument(flag, type=kind, help=text)
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--verbose", action="store_true", help="show the libraries' chatter")

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

    plan = sub.add_parser(
        "plan",
        help="show how a model would be loaded in the memory at hand (the memory planner)",
        description=(
            "Read the model's component sizes (its safetensors headers, or the published sizes "
            "of the backend's default model), take the free GPU memory (or available RAM, or "
            "--budget-gb) and print the dtype, quantization, offload and VAE tiling that "
            "DeskGenerator(..., memory=MODE) would use. Nothing is loaded."
        ),
    )
    plan.add_argument("--backend", default="sdxl", help="sdxl, sd, sdxl-controlnet or hidream")
    plan.add_argument("--model", help="hub id or local folder (default: the backend's)")
    plan.add_argument("--memory", choices=["auto", "low", "balanced", "max-speed"], default="auto")
    plan.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    plan.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    plan.add_argument("--budget-gb", type=float, help="plan for this much memory (GiB)")
    plan.add_argument("--method", choices=["quanto", "torchao"], default="torchao")
    plan.add_argument(
        "--controlnet", action="append", help="sdxl-controlnet: a ControlNet (repeatable)"
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")

    bench = sub.add_parser(
        "bench",
        help="measure backend configurations on one photo and prompt (the seed's model table)",
        description=(
            "Run each configuration (from CONFIG, a YAML/TOML/JSON BenchConfig, and/or --run "
            "flags) on the same photo, prompt and seed: load, warm up, repeat; then write "
            "OUT/bench.md (the table), bench.csv, bench.json and each configuration's image. "
            "Each configuration runs in its own process unless --no-isolate."
        ),
    )
    _add_bench_options(bench)
    compare = sub.add_parser(
        "compare",
        help="bench, then render a contact sheet PNG and an HTML report side by side",
        description=(
            "Like `deskgen bench`, then write OUT/sheet.png (the photo and each output, "
            "labelled with time and memory) and OUT/report.html (self-contained). With --from "
            "DIR, render an earlier bench folder instead of running anything."
        ),
    )
    _add_bench_options(compare)
    compare.add_argument("--from", dest="source", help="a folder `deskgen bench` wrote")
    compare.add_argument("--tile", type=int, default=256, help="tile side in pixels (256)")
    compare.add_argument("--columns", type=int, default=4, help="tiles per row (4)")

    backends = sub.add_parser("backends", help="list backends and whether they are installed")
    backends.add_argument("--json", action="store_true", help="print JSON")

    record = sub.add_parser("record", help="print the generation record embedded in a PNG")
    record.add_argument("image", help="a PNG saved by deskgen")
    record.add_argument(
        "--parameters", action="store_true", help="print the A1111 'parameters' text instead"
    )
    return parser


def _add_bench_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="a BenchConfig file (.yaml, .toml, .json)")
    parser.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="BACKEND[,KEY=VALUE...]",
        help="a configuration: backend, then label=, model=, device=, dtype=, memory=, "
        "use_photo=false, warmup=, repeats=, request fields (steps=, strength=...) and backend "
        "options (preset=fast, distill_lora=PATH, loras=[...], compile=true...; values "
        "starting with [ or {, and true/false/null, are JSON), e.g. "
        "--run sdxl,model=./sdxl,preset=balanced (repeatable; added to CONFIG's runs)",
    )
    parser.add_argument("--out", help="the output folder (required unless --from alone)")
    group = parser.add_argument_group("what every configuration runs (over CONFIG)")
    group.add_argument("--prompt", help="the prompt")
    group.add_argument("--negative-prompt", help="the negative prompt (text or preset:NAME)")
    group.add_argument("--image", help="the desk photo (omit for txt2img)")
    group.add_argument("--steps", type=int, help="denoising steps")
    group.add_argument("--strength", type=float, help="img2img strength")
    group.add_argument("--guidance-scale", type=float, help="guidance scale")
    group.add_argument("--width", type=int, help="output width")
    group.add_argument("--height", type=int, help="output height")
    group.add_argument("--seed", type=int, help="seed (default 0)")
    group.add_argument("--warmup", type=int, help="unmeasured runs first (default 1)")
    group.add_argument("--repeats", type=int, help="measured runs (default 3)")
    group.add_argument("--device", help="default device of the configurations")
    group.add_argument("--dtype", help="default dtype of the configurations")
    group.add_argument("--clip-model", help="a local CLIP model for the prompt-adherence column")
    group.add_argument("--timeout", type=float, help="seconds per isolated configuration")
    group.add_argument(
        "--no-isolate", action="store_true", help="run every configuration in this process"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' chatter")


_RUN_SPLIT = re.compile(r",(?=\s*[A-Za-z_]\w*=)")
"""Commas that start the next ``key=``: commas inside JSON values stay."""
_RUN_OWN = ("label", "model", "device", "dtype", "memory", "use_photo", "warmup", "repeats")
"""`BenchEntry` 's own fields among ``--run``'s keys."""


def _run_spec(text: str) -> dict[str, Any]:
    """``BACKEND[,KEY=VALUE...]`` as a `BenchEntry`'s fields: ``label``, ``model``, ``device``,
    ``dtype``, ``memory``, ``use_photo``, ``warmup`` and ``repeats`` are the run's own, request
    fields (but ``loras``) go to its request, the rest (``loras`` included: LoRAs loaded with
    the model) to its backend options. Values that start with ``[``/``{`` or are
    true/false/null are JSON."""
    from ._models import GenerationRequest

    backend, *items = [part.strip() for part in _RUN_SPLIT.split(text)]
    backend, comma, rest = backend.partition(",")
    if not backend or "=" in backend:
        raise ConfigError(f"--run {text!r}: start with the backend name, e.g. --run sdxl,steps=20")
    if comma:
        raise ConfigError(f"--run {text!r}: write KEY=VALUE after the backend, not {rest!r}")
    entry: dict[str, Any] = {"backend": backend, "options": {}, "request": {}}
    for item in items:
        key, _, value = item.partition("=")
        key = key.strip()
        parsed: Any = value
        if value[:1] in "[{" or value in ("true", "false", "null"):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--run {text!r}: {key}= is not valid JSON ({exc})") from exc
        if key in _RUN_OWN:
            entry[key] = parsed
        elif key in GenerationRequest.model_fields and key != "loras":
            entry["request"][key] = parsed
        else:
            entry["options"][key] = parsed
    return entry


def _bench_config(args: argparse.Namespace) -> Any:
    from ._generator import _format_validation_error
    from .bench import BenchConfig, load_bench_config

    data: dict[str, Any] = {}
    if args.config:
        data = load_bench_config(args.config).model_dump()
    data["runs"] = list(data.get("runs", [])) + [_run_spec(spec) for spec in args.run]
    fields = ("prompt", "negative_prompt", "image", "seed", "warmup", "repeats", "device")
    for name in (*fields, "dtype", "clip_model"):
        if getattr(args, name) is not None:
            data[name] = getattr(args, name)
    if args.timeout is not None:
        data["timeout_s"] = args.timeout
    if args.no_isolate:
        data["isolate"] = False
    request = dict(data.get("request", {}))
    for name in ("steps", "strength", "guidance_scale", "width", "height"):
        if getattr(args, name) is not None:
            request[name] = getattr(args, name)
    data["request"] = request
    if not data["runs"]:
        raise ConfigError("Nothing to run: give a config file or --run BACKEND[,KEY=VALUE...].")
    if "prompt" not in data:
        raise ConfigError("Give the prompt to run (--prompt or prompt: in the config).")
    try:
        return BenchConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"Invalid bench settings: {_format_validation_error(exc)}.") from exc


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchReport, BenchRow, run_bench, write_comparison

    comparing = args.command == "compare"
    if comparing and args.source:
        if args.config or args.run:
            raise ConfigError("--from renders an earlier run: leave out CONFIG and --run.")
        report = BenchReport.load(args.source)
        paths = write_comparison(
            report, args.source, out=args.out, tile=args.tile, columns=args.columns
        )
        for path in paths:
            print(f"wrote {path}")
        return 0
    if not args.out:
        raise ConfigError("Give the output folder with --out.")
    if comparing and (args.tile < 64 or args.columns < 1):  # before minutes of benchmarking
        raise ConfigError("--tile must be at least 64 pixels and --columns at least 1.")
    config = _bench_config(args)

    def on_row(number: int, total: int, row: BenchRow) -> None:
        state = (
            f"failed: {row.error}"
            if not row.ok
            else (f"{row.time_text()} per image, {row.memory_text()}")
        )
        print(f"[{number}/{total}] {row.label}: {state}", file=sys.stderr)

    report = run_bench(config, out=args.out, on_row=on_row)
    if comparing:
        write_comparison(report, args.out, tile=args.tile, columns=args.columns)
    print(report.to_json() if args.json else report.to_markdown())
    written = ["bench.md", "bench.csv", "bench.json"] + (
        ["sheet.png", "report.html"] if comparing else []
    )
    print(f"wrote {', '.join(written)} and the images in {args.out}", file=sys.stderr)
    return 0 if all(row.ok for row in report.rows) else 1


def _quiet_libraries() -> None:
    """Keep diffusers' and transformers' info chatter and loading bars out of the CLI output."""
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # deprecation notices that diffusers triggers inside huggingface_hub: not the user's to fix
    warnings.filterwarnings("ignore", category=UserWarning, module="huggingface_hub")
    warnings.filterwarnings("ignore", category=FutureWarning, module="diffusers")
    if importlib.util.find_spec("diffusers") is not None:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()


def _parse_options(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, values as text: the backend's typed options convert them."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--option {item!r}: write KEY=VALUE, e.g. --option quality=high")
        if key in ("model", "device", "dtype"):
            raise ConfigError(f"--option {key}=...: use --{key} instead.")
        options[key] = value
    return options


def _lora_specs(items: list[str], *, allow_pickle: bool) -> list[Any]:
    """``PATH[:WEIGHT]`` items as `LoraSpec` s (a hub file as ``USER/REPO/FILE``)."""
    from ._lora import LoraSpec, as_lora_spec

    specs = []
    for item in items:
        path, sep, weight_text = item.rpartition(":")
        weight = 1.0
        try:
            weight = float(weight_text) if sep and path else weight
        except ValueError:
            path = item
        else:
            path = path if sep and path else item
        fields = as_lora_spec(path).model_dump() | {"weight": weight, "allow_pickle": allow_pickle}
        specs.append(LoraSpec.model_validate(fields))
    return specs


def _generator_options(args: argparse.Namespace) -> dict[str, Any]:
    """The DeskGenerator options the model flags give."""
    options: dict[str, Any] = {}
    for name in ("variant", "revision", "vae", "cache_dir"):
        if getattr(args, name):
            options[name] = getattr(args, name)
    for flag in ("allow_pickle", "local_files_only", "fuse_loras"):
        if getattr(args, flag):
            options[flag] = True
    if args.lora:
        options["loras"] = _lora_specs(args.lora, allow_pickle=args.allow_pickle)
    options.update(_parse_options(args.option))
    return options


def _check_output(path: Path) -> None:
    folder = path.resolve().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise OSError(f"Cannot write {str(path)!r}: {str(folder)!r} is not a writable folder.")


def _run_generation(
    args: argparse.Namespace, *, prompt: str, model: str | None, show_record: bool = False
) -> int:
    from tqdm.auto import tqdm

    from ._generator import DeskGenerator
    from ._models import StepProgress
    from ._record import png_path

    _check_output(png_path(Path(args.out)))  # before spending minutes generating

    options = _generator_options(args)
    fields: dict[str, Any] = {
        "prompt": prompt,
        "image": args.image,
        "negative_prompt": args.negative_prompt,
        "strength": args.strength,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "seed": args.seed,
        "num_images": args.num_images,
        "width": args.width,
        "height": args.height,
        "long_prompt": args.long_prompt,
        "trigger_words": args.trigger_word,
        "remove_words": args.remove_word,
    }
    if args.control_image:
        fields["control_image"] = [None if c == "auto" else c for c in args.control_image]
    if args.control_scale:
        scales = args.control_scale
        fields["control_scale"] = scales[0] if len(scales) == 1 else scales
    fields = {k: v for k, v in fields.items() if v is not None}
    print(f"Loading {args.backend} ({model or 'default model'})...", file=sys.stderr)
    with DeskGenerator(
        args.backend, model=model, device=args.device, dtype=args.dtype, **options
    ) as gen:
        bar = tqdm(desc="denoising", unit="step", disable=args.no_progress, file=sys.stderr)

        def on_step(progress: StepProgress) -> None:
            if bar.total != progress.total_steps:
                bar.reset(total=progress.total_steps)
            bar.update(progress.step - bar.n)

        try:
            result = gen.generate(on_step=on_step, **fields)
        finally:
            bar.close()
    paths = result.save(args.out)
    if args.save_controls:
        paths += _save_controls(result, png_path(Path(args.out)))
    if args.json or show_record:
        if show_record:
            _print_summary(result)
        print(json.dumps(result.record(0), indent=2, ensure_ascii=False))
    else:
        from ._record import a1111_parameters

        print(a1111_parameters(result, 0))
        _print_summary(result)
    for path in paths:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _save_controls(result: GenerationResult, out: Path) -> list[Path]:
    """Write each control image beside ``out`` (atomically, no record: they are inputs)."""
    import functools

    from PIL import Image

    from ._record import atomic_write

    paths = []
    for i, (control, image) in enumerate(zip(result.controls, result.control_images, strict=True)):
        path = out.with_name(f"{out.stem}-control-{i}-{control.kind}.png")
        atomic_write(path, functools.partial(Image.Image.save, image, format="PNG"))
        paths.append(path)
    return paths


def _print_summary(result: GenerationResult) -> None:
    t = result.timings
    phases = [("load", t.load), ("control", t.control), ("encode", t.encode)]
    phases += [("denoise", t.denoise), ("decode", t.decode)]
    shown = ", ".join(f"{name} {secs:.2f} s" for name, secs in phases if name != "control" or secs)
    print(
        f"\n{result.backend} {result.mode} {result.width}x{result.height} on "
        f"{result.device}/{result.dtype}: {t.total:.2f} s ({shown}), peak "
        f"memory {result.peak_memory.gib:.2f} GiB ({result.peak_memory.kind})"
    )
    if result.prompt_report is not None:
        print(result.prompt_report.summary())
    for warning in result.warnings:
        print(f"warning: {warning}")


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._registry import get_backend_class
    from .demo import (
        DEMO_NEGATIVE_PROMPT,
        DEMO_PROMPT,
        sample_desk_photo,
        tiny_controlnet_options,
        tiny_model,
    )

    model = args.model
    if model is None:
        get_backend_class(args.backend)  # unknown names fail as such
        if args.backend not in ("sdxl", "sd", "sdxl-controlnet"):
            raise ConfigError(
                "The offline demo has tiny models for 'sdxl', 'sd' and 'sdxl-controlnet' only; "
                f"pass --model to run the {args.backend!r} backend."
            )
        if args.backend == "sdxl-controlnet":
            model = str(tiny_model("sdxl"))
            given = _parse_options(args.option)
            kinds = str(given.get("control", "canny,depth"))
            if kinds.lstrip().startswith(("[", "{")):
                raise ConfigError(
                    "The offline demo takes control kinds only (--option control=canny,depth); "
                    "pass --model for Control settings in JSON."
                )
            tiny = tiny_controlnet_options(kinds)
            # the tiny models for the user's kinds; the user's own --option entries win
            args.option = [f"{k}={v}" for k, v in tiny.items() if k not in given] + args.option
        else:
            model = str(tiny_model(args.backend))
        if args.steps is None:
            args.steps = 20
    if args.image is None:
        args.image = str(sample_desk_photo())
    if args.negative_prompt is None:
        args.negative_prompt = DEMO_NEGATIVE_PROMPT  # the seed's photo_default preset
    if args.seed is None:
        args.seed = 42
    return _run_generation(args, prompt=args.prompt or DEMO_PROMPT, model=model, show_record=True)


def _cmd_dataset(args: argparse.Namespace) -> int:
    from ._dataset import DatasetPlan, generate_dataset
    from ._generator import DeskGenerator, _format_validation_error

    data: dict[str, Any] = {}
    if args.plan:
        data = _read_json(args.plan, "dataset plan")
    prompts = list(data.get("prompts", [])) + args.prompt
    if args.prompts_file:
        lines = Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
        prompts += [line.strip() for line in lines if line.strip()]
    data["prompts"] = prompts
    for name in ("images_per_prompt", "seed", "caption_prefix"):
        if getattr(args, name) is not None:
            data[name] = getattr(args, name)
    request = dict(data.get("request", {}))
    for name in ("steps", "guidance_scale", "negative_prompt", "width", "height"):
        if getattr(args, name) is not None:
            request[name] = getattr(args, name)
    data["request"] = request
    try:
        plan = DatasetPlan.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"Invalid dataset plan: {_format_validation_error(exc)}.") from exc
    print(f"Loading {args.backend} ({args.model or 'default model'})...", file=sys.stderr)
    with DeskGenerator(
        args.backend,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        **_generator_options(args),
    ) as gen:
        report = generate_dataset(gen, plan, args.out, progress=not args.no_progress)
    print(
        f"{report.generated} generated, {report.skipped} already there, "
        f"{len(report.failures)} failed, of {report.planned} in {report.out}"
    )
    for failure in report.failures:
        print(f"failed: seed {failure.seed} {failure.prompt!r}: {failure.message}", file=sys.stderr)
    return 0 if not report.failures else 1


def _cmd_train(args: argparse.Namespace) -> int:
    from ._generator import _format_validation_error
    from ._training import LoraTrainingConfig, train_lora

    data: dict[str, Any] = {}
    if args.config:
        data = _read_json(args.config, "training config")
    for flag, _kind, _help in _TRAIN_FLAGS:
        name = flag.removeprefix("--").replace("-", "_")
        value = getattr(args, name)
        if value is None:
            continue
        if name == "no_buckets":
            data["buckets"] = False
        elif name == "random_crop":
            data["center_crop"] = False
        elif name == "no_resume":
            data["resume"] = False
        elif name == "trigger_word":
            data["trigger_words"] = value
        elif name == "target_module":
            data["target_modules"] = value
        else:
            data[name] = value
    try:
        config = LoraTrainingConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"Invalid training settings: {_format_validation_error(exc)}.") from exc
    result = train_lora(config, progress=not args.no_progress)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{result.steps} steps on {result.images} images"
        + (f" (resumed at step {result.resumed_from})" if result.resumed_from else "")
        + f": fixed-noise loss {result.loss_before:.4f} -> {result.loss_after:.4f}"
    )
    print(f"wrote {result.lora}")
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    from ._generator import DeskGenerator
    from .quant import QuantConfig, save_quantized

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
    print(f"Loading {args.backend} ({args.model}), quantizing...", file=sys.stderr)
    with DeskGenerator(
        args.backend,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        quantization=config,
        **_parse_options(args.option),
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


def _cmd_plan(args: argparse.Namespace) -> int:
    from .quant import plan_memory

    extra: dict[str, Any] = {"controlnet": args.controlnet} if args.controlnet else {}
    budget = int(args.budget_gb * 2**30) if args.budget_gb is not None else None
    plan = plan_memory(
        args.backend,
        model=args.model,
        mode=args.memory,
        device=args.device,
        dtype=args.dtype,
        budget_bytes=budget,
        method=args.method,
        **extra,
    )
    print(plan.model_dump_json(indent=2) if args.json else plan.summary())
    return 0 if plan.fits else 1


def _read_json(path: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path!r} is not valid JSON ({exc}): fix the {what} file.") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path!r} holds no JSON object: write the {what} as {{...}}.")
    return data


def _preset_names() -> list[str]:
    from .prompts import list_negative_presets

    return list(list_negative_presets())


def _cmd_describe(args: argparse.Namespace) -> int:
    from ._generator import DeskGenerator
    from ._registry import get_backend_class
    from .backends import Backend

    if get_backend_class(args.backend).describe is Backend.describe:  # before loading weights
        from ._exceptions import UnsupportedOperationError

        raise UnsupportedOperationError(
            f"The {args.backend!r} backend can't describe photos: use --backend openai."
        )
    options = _parse_options(args.option)
    with DeskGenerator(
        args.backend, model=args.model, device=args.device, dtype=args.dtype, **options
    ) as gen:
        description = gen.describe(args.image)
    if args.json:
        print(description.model_dump_json(indent=2))
        return 0
    print(description.summary)
    for name in ("style", "lighting", "clutter", "room"):
        print(f"{name}: {getattr(description, name)}")
    print(f"items: {', '.join(description.items)}")
    print(f"colours: {', '.join(description.colours)}")
    try:
        rendered = description.to_spec().render(backend=args.for_backend)
    except MissingDependencyError:  # counting CLIP tokens needs the local extra
        print(f"(rendering for {args.for_backend} needs deskgen[local]; rendered for openai)")
        rendered = description.to_spec().render(backend="openai")
    print(f"\nmakeover prompt for {args.for_backend}: {rendered.prompt}")
    print(f"negative prompt: {rendered.negative_prompt}")
    return 0


def _cmd_prompt(args: argparse.Namespace) -> int:
    from .prompts import check_prompt

    report = check_prompt(
        args.prompt,
        backend=args.backend,
        negative_prompt=args.negative_prompt,
        long_prompt=args.long_prompt,
        trigger_words=args.trigger_word,
        remove_words=args.remove_word,
    )
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print(report.summary())
    return 0


def _cmd_backends(args: argparse.Namespace) -> int:
    from ._registry import list_backends

    infos = list_backends()
    if args.json:
        print(json.dumps([info.model_dump() for info in infos], indent=2))
        return 0
    width = max(len(info.name) for info in infos)
    for info in infos:
        state = (
            "installed"
            if info.installed
            else f"missing {', '.join(info.missing)}: pip install 'deskgen[{info.extra}]'"
        )
        print(f"{info.name:<{width}}  {info.description}  [{state}]")
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    from ._record import read_record_data

    data = read_record_data(Path(args.image))
    if args.parameters:
        from ._record import read_png_text

        print(read_png_text(args.image).get("parameters", ""))
        return 0
    print(json.dumps(data, indent=2, ensure_ascii=False))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deskgen`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    quiet: tuple[str, ...] = ("generate", "demo", "prompt", "describe", "dataset", "train-lora")
    quiet += ("quantize", "bench", "compare")
    if args.command in quiet and not getattr(args, "verbose", False):
        _quiet_libraries()
    try:
        if args.command == "generate":
            return _run_generation(args, prompt=args.prompt, model=args.model)
        if args.command == "demo":
            return _cmd_demo(args)
        if args.command == "backends":
            return _cmd_backends(args)
        if args.command == "prompt":
            return _cmd_prompt(args)
        if args.command == "describe":
            return _cmd_describe(args)
        if args.command == "dataset":
            return _cmd_dataset(args)
        if args.command == "train-lora":
            return _cmd_train(args)
        if args.command == "quantize":
            return _cmd_quantize(args)
        if args.command == "plan":
            return _cmd_plan(args)
        if args.command in ("bench", "compare"):
            return _cmd_bench(args)
        return _cmd_record(args)
    except DeskgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # e.g. the output folder: not deskgen's to translate, but no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
