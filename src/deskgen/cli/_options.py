"""What the commands share: the option groups (model, request, prompt, output), reading
``--option`` and ``--lora``, the checks made before any weights load, and quieting the
libraries."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from pydantic import ValidationError

from .._exceptions import ConfigError

if TYPE_CHECKING:
    from .._models import GenerationRequest

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``ArgumentParser.add_subparsers`` returns: each command module adds its parsers to
it (``register(sub)``), with ``handler`` (the command's function) and ``quiet_libraries``
(``"all"``, ``"light"`` or ``None``: how `_quiet_libraries` is called) as defaults."""


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


def _add_request_options(
    parser: argparse.ArgumentParser,
    *,
    steps_help: str,
    image_help: str = "the desk photo (img2img); omit for txt2img",
    seed_help: str = "default: random",
    negative_help: str = "",
) -> None:
    group = parser.add_argument_group("request")
    group.add_argument("--image", help=image_help)
    group.add_argument(
        "--negative-prompt",
        help="what to keep out of the image: text or 'preset:NAME' (see `deskgen prompt --help`)"
        + (f"; {negative_help}" if negative_help else ""),
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
    group.add_argument(
        "--true-cfg-scale",
        type=float,
        help="guidance-distilled models (flux-kontext): classifier-free guidance against "
        "--negative-prompt on top of --guidance-scale (default: off)",
    )
    group.add_argument("--seed", type=int, help=f"seed of the first image ({seed_help})")
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


def _add_output_options(
    parser: argparse.ArgumentParser,
    *,
    out: str,
    json_help: str = "print the record as JSON instead of the A1111 parameters",
) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--out", default=out, help=f"PNG to write (default: {out})")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    group.add_argument("--json", action="store_true", help=json_help)
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


def _quiet_libraries(*, diffusers: bool = True) -> None:
    """Keep diffusers', transformers' and huggingface_hub's info chatter and loading bars out
    of the CLI output (the CLI prints its own "Loading ..." line instead).

    ``diffusers=False`` leaves diffusers unimported (it imports torch: seconds) for commands
    that load no pipeline; its environment variable still applies if it is imported later."""
    from .._quiet import silence_import_noise

    silence_import_noise()  # torchao's "Failed to load ...so" and the like, when diffusers loads
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # deprecation notices that diffusers triggers inside huggingface_hub: not the user's to fix
    warnings.filterwarnings("ignore", category=UserWarning, module="huggingface_hub")
    warnings.filterwarnings("ignore", category=FutureWarning, module="diffusers")
    # the variables are read at import: libraries imported already are told directly
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    if (diffusers or "diffusers" in sys.modules) and importlib.util.find_spec("diffusers"):
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
    from .._lora import LoraSpec, as_lora_spec

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


def _lax(model: Any, values: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """``values`` typed as ``model``'s fields read them from text (``"5"`` is 5, ``"true"``
    True: pydantic's ``model_validate_strings``): command-line values are text, and deskgen's
    models are strict. Values that are not text, or don't validate, stay as given, for the
    strict check to report."""
    typed = dict(values)
    for key, value in values.items():
        if not isinstance(value, str):
            continue
        try:
            typed[key] = getattr(model.model_validate_strings(base | {key: value}), key)
        except ValidationError:
            continue
    return typed


def _checked_options(
    backend: str, model: str | None, device: str, dtype: str, options: dict[str, Any]
) -> dict[str, Any]:
    """The backend options, typed from the command line's text and validated as
    `DeskGenerator` validates them, before any weights load."""
    from .._generator import validate_options
    from .._registry import get_backend_class

    cls = get_backend_class(backend)
    model = model if model is not None else cls.default_model
    if model is None:
        raise ConfigError(f"The {backend!r} backend has no default model: pass --model.")
    typed = _lax(cls.options_class, options, {"model": model, "device": device, "dtype": dtype})
    validate_options(backend, cls.options_class, model, device, dtype, typed)
    return typed


def _checked_request(fields: dict[str, Any]) -> GenerationRequest:
    """The request, validated (and its photo and control images read) before any load."""
    from .._exceptions import InvalidRequestError
    from .._generator import _format_validation_error
    from .._images import load_image
    from .._models import GenerationRequest

    try:
        request = GenerationRequest.model_validate(fields)
    except ValidationError as exc:
        raise InvalidRequestError(f"Invalid request: {_format_validation_error(exc)}.") from exc
    controls = request.control_image
    for image in [request.image, *(controls if isinstance(controls, list) else [controls])]:
        if image is not None:
            load_image(image)  # unreadable, too large, not a photo: before minutes of loading
    return request


def _read_json(path: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path!r} is not valid JSON ({exc}): fix the {what} file.") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path!r} holds no JSON object: write the {what} as {{...}}.")
    return data


def _preset_names() -> list[str]:
    from ..prompts import list_negative_presets

    return list(list_negative_presets())
