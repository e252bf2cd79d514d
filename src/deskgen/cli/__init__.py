"""The ``deskgen`` command line: generate, demo, mask, prompt, describe, dataset, train-lora,
quantize, plan, bench, compare, serve, keys, backends, record.

Run ``deskgen --help`` or ``deskgen COMMAND --help``. Exit codes: 0 success, 1 a deskgen error
(its message says how to fix it), 2 bad command-line usage, 130 interrupted.

Each command module registers its own parsers (``register(sub)``, as huggingface_hub's CLI
does): `generate` (generate, demo), `mask` (mask), `prompt` (prompt, describe), `training`
(dataset, train-lora), `quantize` (quantize, plan), `bench` (bench, compare), `serve` (serve,
keys) and `info` (backends, record); `_options` holds what they share. Nothing heavy is
imported before a command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._exceptions import DeskgenError
from .._version import __version__
from . import bench, generate, info, mask, prompt, quantize, serve, training

# importable from deskgen.cli as before the package split (the bench worker, tests)
from ._options import _checked_options as _checked_options
from ._options import _lora_specs as _lora_specs
from ._options import _quiet_libraries as _quiet_libraries
from .bench import _run_spec as _run_spec
from .quantize import _memory_size as _memory_size

__all__ = ["main"]

_MODULES = (generate, mask, prompt, training, quantize, bench, serve, info)
"""In the order ``deskgen --help`` lists their commands."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deskgen",
        description="Turn a photo of a desk into a picture of an improved desk setup.",
    )
    parser.add_argument("--version", action="version", version=f"deskgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deskgen`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.quiet_libraries is not None and not getattr(args, "verbose", False):
        # "light": the command loads no pipeline here (`prompt`; bench's isolated workers quiet
        # themselves): no seconds spent importing diffusers
        _quiet_libraries(diffusers=args.quiet_libraries == "all")
    try:
        code: int = args.handler(args)
        return code
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
