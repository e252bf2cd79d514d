"""``deskgen backends`` and ``deskgen record``: what is installed, what a PNG holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._options import Subparsers


def register(sub: Subparsers) -> None:
    """Add ``backends`` and ``record``."""
    backends = sub.add_parser("backends", help="list backends and whether they are installed")
    backends.add_argument("--json", action="store_true", help="print JSON")
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
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    from .._record import read_record_data

    data = read_record_data(Path(args.image))
    if args.parameters:
        from .._record import read_png_text

        print(read_png_text(args.image).get("parameters", ""))
        return 0
    print(json.dumps(data, indent=2, ensure_ascii=False))
    return 0
