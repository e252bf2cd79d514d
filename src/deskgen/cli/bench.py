"""``deskgen bench`` and ``deskgen compare``: configurations measured side by side, with
their progress on stderr."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from typing import Any

from pydantic import ValidationError

from .._exceptions import ConfigError, DeskgenError
from ._options import Subparsers, _lax, _quiet_libraries


def register(sub: Subparsers) -> None:
    """Add ``bench`` and ``compare``."""
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
    _add_bench_options(bench, comparing=False)
    bench.set_defaults(handler=_cmd_bench, quiet_libraries="light")

    compare = sub.add_parser(
        "compare",
        help="bench, then render a contact sheet PNG and an HTML report side by side",
        description=(
            "Like `deskgen bench`, then write OUT/sheet.png (the photo and each output, "
            "labelled with time and memory) and OUT/report.html (self-contained). With --from "
            "DIR, render an earlier bench folder instead of running anything."
        ),
    )
    _add_bench_options(compare, comparing=True)
    compare.add_argument("--from", dest="source", help="a folder `deskgen bench` wrote")
    compare.add_argument("--tile", type=int, default=256, help="tile side in pixels (256)")
    compare.add_argument("--columns", type=int, default=4, help="tiles per row (4)")
    compare.set_defaults(handler=_cmd_bench, quiet_libraries="light")


def _add_bench_options(parser: argparse.ArgumentParser, *, comparing: bool) -> None:
    parser.add_argument("config", nargs="?", help="a BenchConfig file (.yaml, .toml, .json)")
    parser.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="BACKEND[,KEY=VALUE...]",
        help="a configuration: backend, then label=, model=, device=, dtype=, memory=, "
        "use_photo=false, mask=PATH|auto, use_mask=false, warmup=, repeats=, request fields "
        "(steps=, strength=...) and backend options (preset=fast, distill_lora=PATH, "
        "loras=[...], compile=true...; values starting with [ or {, and true/false/null, are "
        "JSON), e.g. "
        "--run sdxl,model=./sdxl,preset=balanced (repeatable; added to CONFIG's runs)",
    )
    parser.add_argument(
        "--out",
        help="the output folder (required"
        + ("; with --from: where to write, default the --from folder)" if comparing else ")"),
    )
    group = parser.add_argument_group("what every configuration runs (over CONFIG)")
    group.add_argument("--prompt", help="the prompt")
    group.add_argument("--negative-prompt", help="the negative prompt (text or preset:NAME)")
    group.add_argument("--image", help="the desk photo (omit for txt2img)")
    group.add_argument(
        "--mask",
        metavar="PATH|auto",
        help="keep the room, change the desk: a mask image (white: change, black: keep) or "
        "'auto' (the desk found once, on the CPU, for every run); runs whose backend takes no "
        "mask get an error row (give them use_mask=false)",
    )
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


_RUN_OWN = (
    "label",
    "model",
    "device",
    "dtype",
    "memory",
    "use_photo",
    "mask",
    "use_mask",
    "warmup",
    "repeats",
)
"""`BenchEntry` 's own fields among ``--run``'s keys."""


def _run_spec(text: str) -> dict[str, Any]:
    """``BACKEND[,KEY=VALUE...]`` as a `BenchEntry`'s fields: ``label``, ``model``, ``device``,
    ``dtype``, ``memory``, ``use_photo``, ``mask``, ``use_mask``, ``warmup`` and ``repeats``
    are the run's own, request
    fields (but ``loras``) go to its request, the rest (``loras`` included: LoRAs loaded with
    the model) to its backend options. Values that start with ``[``/``{`` or are
    true/false/null are JSON."""
    from .._models import GenerationRequest

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
    entry["request"] = _scalars(GenerationRequest, entry["request"], {"prompt": "x"})
    with contextlib.suppress(DeskgenError):  # an unknown backend: its row says so
        from .._registry import get_backend_class

        options_class = get_backend_class(backend, check_installed=False).options_class
        entry["options"] = _scalars(options_class, entry["options"], {"model": "x"})
    return entry


def _scalars(model: Any, values: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Text values that ``model``'s fields read as numbers or booleans, as those (``steps=20``
    is 20, ``max_retries=3`` is 3): the models are strict, and a config file holds numbers.
    Everything else stays as written (its checks and errors are the run's)."""
    typed = _lax(model, {k: v for k, v in values.items() if isinstance(v, str)}, base)
    return values | {
        key: value
        for key, value in typed.items()
        if isinstance(value, (bool, int, float)) and not isinstance(values[key], bool)
    }


def _bench_config(args: argparse.Namespace) -> Any:
    from .._generator import _format_validation_error
    from ..bench import BenchConfig, load_bench_config

    data: dict[str, Any] = {}
    if args.config:
        data = load_bench_config(args.config).model_dump()
    data["runs"] = list(data.get("runs", [])) + [_run_spec(spec) for spec in args.run]
    fields = ("prompt", "negative_prompt", "image", "mask", "seed", "warmup", "repeats", "device")
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
    from ..bench import BenchReport, BenchRow, run_bench, write_comparison
    from ..bench._run import BenchProgress

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
    if not config.isolate and not args.verbose:
        _quiet_libraries()  # the configurations load here, not in quiet workers

    def on_progress(event: BenchProgress) -> None:
        where = f"[{event.number}/{event.total}] {event.label}:"
        if event.stage == "start":
            print(f"{where} loading...", file=sys.stderr)
        elif event.stage == "loaded":
            print(f"{where} loaded in {event.seconds or 0:.1f} s", file=sys.stderr)
        else:
            run = "warm-up" if event.stage == "warmup" else "repeat"
            print(
                f"{where} {run} {event.index}/{event.count}: {event.seconds or 0:.1f} s",
                file=sys.stderr,
            )

    def on_row(number: int, total: int, row: BenchRow) -> None:
        state = (
            f"failed: {row.error}"
            if not row.ok
            else (f"{row.time_text()} per image, {row.memory_text()}")
        )
        print(f"[{number}/{total}] {row.label}: {state}", file=sys.stderr)

    report = run_bench(config, out=args.out, on_row=on_row, on_progress=on_progress)
    pictures: list[str] = []
    if comparing:
        paths = write_comparison(report, args.out, tile=args.tile, columns=args.columns)
        pictures = [path.name for path in paths]
    print(report.to_json() if args.json else report.to_markdown())
    written = ["bench.md", "bench.csv", "bench.json", *pictures]
    print(f"wrote {', '.join(written)} and the images in {args.out}", file=sys.stderr)
    return 0 if all(row.ok for row in report.rows) else 1
