"""``deskgen backends`` and ``deskgen record``: what is installed, what a PNG holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ._options import Subparsers

if TYPE_CHECKING:
    from ..backends._profile import BackendProfile


def register(sub: Subparsers) -> None:
    """Add ``backends`` and ``record``."""
    backends = sub.add_parser("backends", help="list backends and whether they are installed")
    backends.add_argument("--json", action="store_true", help="print JSON")
    backends.add_argument(
        "-v", "--verbose", action="store_true", help="also what each can do (its profile)"
    )
    backends.set_defaults(handler=_cmd_backends, quiet_libraries=None)

    record = sub.add_parser("record", help="print the generation record embedded in a PNG")
    record.add_argument("image", help="a PNG saved by deskgen")
    record.add_argument(
        "--parameters", action="store_true", help="print the A1111 'parameters' text instead"
    )
    record.set_defaults(handler=_cmd_record, quiet_libraries=None)


def _cmd_backends(args: argparse.Namespace) -> int:
    from .._registry import list_backends

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
        if args.verbose:
            print(f"{'':<{width}}  {_capabilities(info.profile)}")
    return 0


def _capabilities(profile: BackendProfile) -> str:
    """A backend's profile in one line (``deskgen backends -v``)."""
    parts = [f"modes: {', '.join(profile.modes)}"]
    flags = {
        "LoRAs": profile.loras,
        "control images": profile.control_images,
        "masks": profile.masks,
        f"{profile.references} reference image(s)": profile.references > 0,
        "describe": profile.describes,
        "saves quantized": profile.saves_quantized,
        "offline demo": profile.demo is not None,
    }
    parts += [name for name, on in flags.items() if on]
    if profile.quantizable:
        parts.append(f"quantizes {', '.join(profile.quantizable)}")
    if profile.presets:
        parts.append(f"presets {', '.join(profile.presets)}")
    return "; ".join(parts)


def _cmd_record(args: argparse.Namespace) -> int:
    from .._record import read_record_data

    data = read_record_data(Path(args.image))
    if args.parameters:
        from .._record import read_png_text

        print(read_png_text(args.image).get("parameters", ""))
        return 0
    print(json.dumps(data, indent=2, ensure_ascii=False))
    return 0
