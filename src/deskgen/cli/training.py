"""``deskgen dataset`` (an imagefolder of generated desks) and ``deskgen train-lora``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .._exceptions import ConfigError
from ._options import (
    Subparsers,
    _add_model_options,
    _checked_options,
    _generator_options,
    _read_json,
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


def register(sub: Subparsers) -> None:
    """Add ``dataset`` and ``train-lora``."""
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
    dataset.set_defaults(handler=_cmd_dataset, quiet_libraries="all")

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
    train.set_defaults(handler=_cmd_train, quiet_libraries="all")


def _cmd_dataset(args: argparse.Namespace) -> int:
    from .._dataset import DatasetPlan, generate_dataset
    from .._generator import DeskGenerator, _format_validation_error

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
    options = _checked_options(
        args.backend, args.model, args.device, args.dtype, _generator_options(args)
    )
    print(f"Loading {args.backend} ({args.model or 'default model'})...", file=sys.stderr)
    with DeskGenerator(
        args.backend, model=args.model, device=args.device, dtype=args.dtype, **options
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
    from .._generator import _format_validation_error
    from .._training import LoraTrainingConfig, train_lora

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
