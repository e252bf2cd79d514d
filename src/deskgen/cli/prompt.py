"""``deskgen prompt`` (a prompt's report, no model loaded) and ``deskgen describe`` (a
photo's description and the makeover prompt rendered from it)."""

from __future__ import annotations

import argparse
import re

from .._exceptions import ConfigError, MissingDependencyError
from ._options import (
    Subparsers,
    _add_model_options,
    _add_prompt_options,
    _checked_options,
    _parse_options,
    _preset_names,
)


def register(sub: Subparsers) -> None:
    """Add ``prompt`` and ``describe``."""
    prompt = sub.add_parser(
        "prompt",
        help="report how a backend's text encoders see a prompt, without loading a model",
        description=(
            "Count tokens per text encoder of a backend with the real tokenizers (CLIP's "
            "vocabulary ships with deskgen; T5 and Llama ones from --tokenizer or the local "
            "Hugging Face cache, never a download nobody asked for) and show the chunks, the "
            "limit and anything that would not be encoded. Negative presets: "
            + ", ".join(f"preset:{name}" for name in _preset_names())
            + ", preset:default (the backend's)."
        ),
    )
    prompt.add_argument("prompt", help="the prompt to check")
    prompt.add_argument("--backend", default="sdxl", help="backend name (default: sdxl)")
    prompt.add_argument(
        "--tokenizer",
        action="append",
        default=[],
        metavar="[ENCODER=]PATH",
        help="the tokenizer of a T5 or Llama encoder: a folder, or a hub id (downloaded if not "
        "cached), e.g. text_encoder_3=./t5-tokenizer; ENCODER may be a family (t5, llama), and "
        "may be left out for a backend with one such encoder (repeatable). Without it, they "
        "come from the local Hugging Face cache only",
    )
    prompt_group = prompt.add_argument_group("prompt")
    prompt_group.add_argument("--negative-prompt", help="text or 'preset:NAME'")
    _add_prompt_options(prompt_group)
    prompt.add_argument("--json", action="store_true", help="print the report as JSON")
    prompt.set_defaults(handler=_cmd_prompt, quiet_libraries="light")

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
    describe.set_defaults(handler=_cmd_describe, quiet_libraries="all")


def _cmd_describe(args: argparse.Namespace) -> int:
    from .._generator import DeskGenerator
    from .._registry import backends_with, get_backend_class

    if not get_backend_class(args.backend).profile.describes:  # before loading weights
        from .._exceptions import UnsupportedOperationError

        takers = " or ".join(f"--backend {name}" for name in backends_with("describes"))
        raise UnsupportedOperationError(
            f"The {args.backend!r} backend can't describe photos: use {takers}."
        )
    from .._images import load_image

    options = _checked_options(
        args.backend, args.model, args.device, args.dtype, _parse_options(args.option)
    )
    load_image(args.image)  # an unreadable photo fails before the model loads
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
    from ..prompts import check_prompt

    report = check_prompt(
        args.prompt,
        backend=args.backend,
        negative_prompt=args.negative_prompt,
        long_prompt=args.long_prompt,
        trigger_words=args.trigger_word,
        remove_words=args.remove_word,
        tokenizers=_tokenizer_flags(args.tokenizer, args.backend),
    )
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print(report.summary())
    return 0


_ENCODER_KEY = re.compile(r"^[A-Za-z_]\w*$")


def _tokenizer_flags(items: list[str], backend: str) -> dict[str, str]:
    """``--tokenizer [ENCODER=]PATH`` items by encoder name or family; a bare ``PATH`` is for
    the backend's one encoder without a packaged vocabulary."""
    from .._registry import get_backend_class
    from ..prompts import EncoderFamily

    given: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if sep and _ENCODER_KEY.match(key.strip()) and value.strip():
            given[key.strip()] = value.strip()
            continue
        specs = get_backend_class(backend, check_installed=False).text_encoders
        others = [spec.name for spec in specs if spec.family is not EncoderFamily.CLIP]
        if len(others) != 1:
            raise ConfigError(
                f"--tokenizer {item!r}: the {backend!r} backend has "
                + (
                    f"{len(others)} encoders that take one ({', '.join(others)})"
                    if others
                    else "no encoder that needs one (CLIP's vocabulary ships with deskgen)"
                )
                + ": write --tokenizer ENCODER=PATH"
                + (f", e.g. --tokenizer {others[0]}={item}" if others else "")
                + "."
            )
        given[others[0]] = item
    return given
