"""``deskgen mask``: what a makeover would change in a photo, without generating; and the mask
options ``generate`` and ``demo`` share (``--mask``, ``--mask-target``, ``--save-mask``)."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

from ._options import Subparsers


def register(sub: Subparsers) -> None:
    """Add ``mask``."""
    cmd = sub.add_parser(
        "mask",
        help="find the desk in a photo and write the mask a makeover would change",
        description=(
            "Find the desk and what stands on it in PHOTO with a segmentation model (or, with "
            "--route open-vocabulary, Grounding DINO and SAM) and write the mask (white: "
            "changed, black: kept as it is) that generate --mask auto would use, without "
            "generating. --overlay also writes the photo with the mask tinted over it."
        ),
    )
    cmd.add_argument("photo", help="the desk photo")
    cmd.add_argument("--out", default="mask.png", help="mask PNG to write (default: mask.png)")
    cmd.add_argument("--overlay", help="also write the photo with the mask tinted over it")
    _add_shape_options(cmd.add_argument_group("mask"), prefix="")
    cmd.add_argument("--device", default="auto", help="where the model runs (default: auto)")
    cmd.set_defaults(handler=_cmd_mask, quiet_libraries="light")


def add_mask_options(parser: argparse.ArgumentParser) -> None:
    """The mask options of ``generate`` and ``demo``."""
    group = parser.add_argument_group("mask (change only the desk, keep the room)")
    group.add_argument(
        "--mask",
        metavar="PATH|auto",
        help="change only part of the photo: 'auto' finds the desk and what stands on it, or a "
        "mask image (white: change, black: keep)",
    )
    _add_shape_options(group, prefix="mask-")
    group.add_argument(
        "--padding-mask-crop",
        type=int,
        metavar="PX",
        help="redraw only the mask's box grown by PX pixels, at full size (A1111's 'Only "
        "masked'; diffusers backends)",
    )
    group.add_argument(
        "--raw-output",
        action="store_true",
        help="the pipeline's output as it is, not put back over the photo outside the mask",
    )
    group.add_argument(
        "--save-mask", action="store_true", help="also write the mask used, as STEM.mask.png"
    )


def _add_shape_options(group: argparse._ArgumentGroup, *, prefix: str) -> None:
    group.add_argument(
        f"--{prefix}target",
        action="append",
        metavar="NAME",
        help="what to change: a class name of the segmentation model, or with --"
        f"{prefix}route open-vocabulary any name (repeatable; default: the desk, table and what "
        "stands on them)" + ("; implies --mask auto" if prefix else ""),
    )
    group.add_argument(f"--{prefix}grow", type=int, metavar="PX", help="grow (or, < 0, shrink)")
    group.add_argument(f"--{prefix}blur", type=int, metavar="PX", help="feather the edge by PX")
    group.add_argument(
        f"--{prefix}min-area", type=float, metavar="F", help="drop regions under F of the photo"
    )
    group.add_argument(
        f"--{prefix}route",
        choices=("closed-set", "open-vocabulary"),
        help="closed-set: a segmentation model's classes (the default); open-vocabulary: any "
        "name, found by Grounding DINO and SAM",
    )
    group.add_argument(
        f"--{prefix}model",
        help="hub id or folder of the segmentation model (default: ADE20K Mask2Former) or, "
        "open-vocabulary, of the Grounding DINO detector (default: grounding-dino-tiny)",
    )
    group.add_argument(
        f"--{prefix}sam-model",
        metavar="MODEL",
        help="open-vocabulary: hub id or folder of the SAM model that turns boxes into masks "
        "(default: facebook/sam-vit-base)",
    )


def desk_mask_settings(args: argparse.Namespace, *, prefix: str) -> Any:
    """The `DeskMask` the shape options describe (``None`` when none is given)."""
    from pydantic import ValidationError

    from .._exceptions import ConfigError
    from ..masks import DeskMask

    attr = prefix.replace("-", "_")
    given = {
        "targets": getattr(args, f"{attr}target"),
        "grow": getattr(args, f"{attr}grow"),
        "blur": getattr(args, f"{attr}blur"),
        "min_area": getattr(args, f"{attr}min_area"),
        "route": getattr(args, f"{attr}route"),
        "model": getattr(args, f"{attr}model"),
        "sam_model": getattr(args, f"{attr}sam_model"),
    }
    given = {k: v for k, v in given.items() if v is not None}
    try:
        return DeskMask(**given)
    except ValidationError as exc:
        problems = "; ".join(
            (f"--{prefix}{'.'.join(str(p) for p in e['loc'])}: " if e["loc"] else "") + e["msg"]
            for e in exc.errors()
        )
        raise ConfigError(f"Invalid mask options: {problems}.".replace("_", "-")) from exc


def mask_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields of ``generate``'s mask options."""
    from .._exceptions import ConfigError

    shaped = any(
        getattr(args, f"mask_{name}") is not None
        for name in ("target", "grow", "blur", "min_area", "route", "model", "sam_model")
    )
    fields: dict[str, Any] = {}
    if args.mask is not None and args.mask != "auto":
        if shaped:
            raise ConfigError(
                "--mask-target/--mask-grow/--mask-blur/--mask-min-area/--mask-route/"
                "--mask-model/--mask-sam-model shape a found mask: use them with --mask auto, "
                "not with a mask image."
            )
        fields["mask"] = args.mask
    elif args.mask == "auto" or shaped:
        fields["mask"] = desk_mask_settings(args, prefix="mask-")
    if args.padding_mask_crop is not None:
        fields["padding_mask_crop"] = args.padding_mask_crop
    if args.raw_output:
        fields["keep_unmasked"] = False
    return fields


def _cmd_mask(args: argparse.Namespace) -> int:
    from .._images import load_image
    from .._record import atomic_write, png_path
    from ..masks import find_desk_mask, mask_overlay

    settings = desk_mask_settings(args, prefix="")
    photo, _ = load_image(args.photo)
    found = find_desk_mask(photo, settings=settings, device=args.device)
    out = png_path(Path(args.out))
    atomic_write(out, functools.partial(found.mask.save, format="PNG"))
    print(f"wrote {out}", file=sys.stderr)
    if args.overlay:
        overlay = png_path(Path(args.overlay))
        tinted = mask_overlay(photo, found.mask)
        atomic_write(overlay, functools.partial(tinted.save, format="PNG"))
        print(f"wrote {overlay}", file=sys.stderr)
    found_text = ", ".join(f"{name} {share:.1%}" for name, share in found.found.items())
    models = found.settings.model
    if found.settings.route == "open-vocabulary":
        models = f"{models} + {found.settings.sam_model}"
    print(
        f"{found.coverage:.1%} of the photo would change ({found_text}); model "
        f"{models}, grow {found.settings.grow} px, blur {found.settings.blur} px"
    )
    return 0
