"""The ``deskgen`` command line: generate, demo, prompt, describe, backends, record.

Run ``deskgen --help`` or ``deskgen COMMAND --help``. Exit codes: 0 success, 1 a deskgen error
(its message says how to fix it), 2 bad command-line usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
        help="also load pickle weights (.bin/.ckpt); only for checkpoints you trust",
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

    backends = sub.add_parser("backends", help="list backends and whether they are installed")
    backends.add_argument("--json", action="store_true", help="print JSON")

    record = sub.add_parser("record", help="print the generation record embedded in a PNG")
    record.add_argument("image", help="a PNG saved by deskgen")
    record.add_argument(
        "--parameters", action="store_true", help="print the A1111 'parameters' text instead"
    )
    return parser


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

    options: dict[str, Any] = {}
    for name in ("variant", "revision", "vae", "cache_dir"):
        if getattr(args, name):
            options[name] = getattr(args, name)
    for flag in ("allow_pickle", "local_files_only"):
        if getattr(args, flag):
            options[flag] = True
    options.update(_parse_options(args.option))
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
    if args.command in ("generate", "demo", "prompt", "describe") and not getattr(
        args, "verbose", False
    ):
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
