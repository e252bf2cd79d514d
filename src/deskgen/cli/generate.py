"""``deskgen generate`` and ``deskgen demo``: a makeover, printed and saved."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigError
from ._options import (
    Subparsers,
    _add_model_options,
    _add_output_options,
    _add_request_options,
    _check_output,
    _checked_options,
    _checked_request,
    _generator_options,
    _parse_options,
)
from .mask import add_mask_options, mask_fields

if TYPE_CHECKING:
    from .._models import GenerationResult


def register(sub: Subparsers) -> None:
    """Add ``generate`` and ``demo``."""
    gen = sub.add_parser(
        "generate",
        help="generate makeover images from a prompt (and a desk photo)",
        description="Generate makeover images: txt2img from PROMPT, img2img with --image.",
    )
    gen.add_argument("prompt", help="what the improved desk should look like")
    _add_model_options(gen, backend="sdxl")
    _add_request_options(gen, steps_help="default: the backend's, 30 for sdxl")
    add_mask_options(gen)
    _add_output_options(gen, out="makeover.png")
    gen.set_defaults(handler=_cmd_generate, quiet_libraries="all")

    demo = sub.add_parser(
        "demo",
        help="the whole makeover offline on a tiny model (or real weights with --model)",
        description=(
            "Run a makeover (img2img) of the sample desk photo shipped with deskgen, with the "
            "seed team's clean-desk prompt, the photo_default negative preset and seed 42, and "
            "print the summary, the prompt report and the image's record. With no --model it "
            "builds a tiny random-weight model of the backend (sdxl, sd or sdxl-controlnet) into "
            "the user cache on first use (no network, no GPU; the picture is noise, the path is "
            "the real one). With --model it runs the same makeover on real weights. "
            "--prompt, --image, --negative-prompt and --seed replace the demo's. With --mask "
            "auto only the desk is redrawn: offline, a tiny segmentation model trained on the "
            "sample photo finds it."
        ),
    )
    demo.add_argument("--prompt", help="a prompt instead of the demo's clean-desk prompt")
    _add_model_options(demo, backend="sdxl")
    _add_request_options(
        demo,
        steps_help="default: 20 on the tiny model, the backend's (30 for sdxl) with --model",
        image_help="a desk photo instead of the sample one shipped with deskgen (the demo is "
        "always a makeover of a photo)",
        seed_help="default: 42",
        negative_help="default: preset:photo_default",
    )
    add_mask_options(demo)
    _add_output_options(
        demo,
        out="deskgen-demo.png",
        json_help="no effect: the demo always prints the record as JSON",
    )
    demo.set_defaults(handler=_cmd_demo, quiet_libraries="all")


def _cmd_generate(args: argparse.Namespace) -> int:
    return _run_generation(args, prompt=args.prompt, model=args.model)


def _run_generation(
    args: argparse.Namespace, *, prompt: str, model: str | None, show_record: bool = False
) -> int:
    from .._generator import DeskGenerator
    from .._models import StepProgress
    from .._record import png_path

    _check_output(png_path(Path(args.out)))  # before spending minutes generating

    fields: dict[str, Any] = {
        "prompt": prompt,
        "image": args.image,
        "negative_prompt": args.negative_prompt,
        "strength": args.strength,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "true_cfg_scale": args.true_cfg_scale,
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
    fields = {k: v for k, v in fields.items() if v is not None} | mask_fields(args)
    # everything checked before any weights load: a mistake costs no loading time
    options = _checked_options(
        args.backend, model, args.device, args.dtype, _generator_options(args)
    )
    request = _checked_request(fields)
    print(f"Loading {args.backend} ({model or 'default model'})...", file=sys.stderr)
    with DeskGenerator(
        args.backend, model=model, device=args.device, dtype=args.dtype, **options
    ) as gen:
        bar: Any = None  # made on the first step: no empty bar while the work starts

        def on_step(progress: StepProgress) -> None:
            nonlocal bar
            if args.no_progress:
                return
            if bar is None:
                from tqdm.auto import tqdm

                bar = tqdm(
                    desc="denoising", unit="step", total=progress.total_steps, file=sys.stderr
                )
            elif bar.total != progress.total_steps:
                bar.reset(total=progress.total_steps)
            bar.update(progress.step - bar.n)

        try:
            result = gen.generate(request, on_step=on_step)
        finally:
            if bar is not None:
                bar.close()
    paths = result.save(args.out, mask=args.save_mask)
    if args.save_controls:
        paths += _save_controls(result, png_path(Path(args.out)))
    if args.json or show_record:
        if show_record:
            _print_summary(result)
        print(json.dumps(result.record(0), indent=2, ensure_ascii=False))
    else:
        from .._record import a1111_parameters

        print(a1111_parameters(result, 0))
        _print_summary(result)
    for path in paths:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _save_controls(result: GenerationResult, out: Path) -> list[Path]:
    """Write each control image beside ``out`` (atomically, no record: they are inputs)."""
    import functools

    from PIL import Image

    from .._record import atomic_write

    paths = []
    for i, (control, image) in enumerate(zip(result.controls, result.control_images, strict=True)):
        path = out.with_name(f"{out.stem}-control-{i}-{control.kind}.png")
        atomic_write(path, functools.partial(Image.Image.save, image, format="PNG"))
        paths.append(path)
    return paths


def summary_line(result: GenerationResult) -> str:
    """The summary the CLI prints: the request's total (the model's load is extra, shown
    apart), its phases, the peak memory."""
    t = result.timings
    phases = [("mask", t.mask)] if result.request.desk_mask is not None else []
    phases += [("control", t.control)] if result.controls else []
    phases += [("encode", t.encode), ("denoise", t.denoise), ("decode", t.decode)]
    shown = ", ".join(f"{name} {secs:.2f} s" for name, secs in phases)
    return (
        f"{result.backend} {result.mode} {result.width}x{result.height} on "
        f"{result.device}/{result.dtype}: total {t.total:.2f} s (+ load {t.load:.2f} s): "
        f"{shown}; peak memory {result.peak_memory.gib:.2f} GiB ({result.peak_memory.kind})"
    )


def _print_summary(result: GenerationResult) -> None:
    print(f"\n{summary_line(result)}")
    if result.prompt_report is not None:
        print(result.prompt_report.summary())
    for warning in result.warnings:
        print(f"warning: {warning}")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .._registry import backends_with, either, get_backend_class
    from ..demo import (
        DEMO_NEGATIVE_PROMPT,
        DEMO_PROMPT,
        sample_desk_photo,
        tiny_controlnet_options,
        tiny_model,
    )

    model = args.model
    if model is None:
        profile = get_backend_class(args.backend).profile  # unknown names fail as such
        if profile.demo is None:
            raise ConfigError(
                "The offline demo has tiny models for "
                f"{either(backends_with('demo'), conjunction='and')} only; pass --model to run "
                f"the {args.backend!r} backend."
            )
        if profile.control_images:
            model = str(tiny_model(profile.demo))
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
            model = str(tiny_model(profile.demo))
        if args.steps is None:
            args.steps = 20
        masked = args.mask == "auto" or args.mask_target is not None
        closed_set = args.mask_route in (None, "closed-set")
        if masked and closed_set and args.mask_model is None:
            from ..demo import tiny_segmenter

            args.mask_model = str(tiny_segmenter())  # trained on the sample photo, offline
    if args.image is None:
        args.image = str(sample_desk_photo())
    if args.negative_prompt is None:
        args.negative_prompt = DEMO_NEGATIVE_PROMPT  # the seed's photo_default preset
    if args.seed is None:
        args.seed = 42
    return _run_generation(args, prompt=args.prompt or DEMO_PROMPT, model=model, show_record=True)
