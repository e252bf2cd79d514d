"""``deskgen serve``: the makeover service; ``deskgen keys``: its API keys."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._options import Subparsers, _add_model_options, _checked_options, _generator_options


def register(sub: Subparsers) -> None:
    """Add ``serve`` and ``keys``."""
    cmd = sub.add_parser(
        "serve",
        help="run the makeover service: OpenAI Images API, jobs, keys (needs deskgen[serve])",
        description=(
            "Serve BACKEND's model over HTTP: the OpenAI Images API (POST /v1/images/"
            "generations, /v1/images/edits: the official openai client works with base_url=), "
            "jobs with progress events, cancelling and webhooks (/v1/jobs), /healthz, /readyz "
            "and /metrics. One worker per --device owns the weights; jobs live in SQLite "
            "under --data and survive crashes. Without --keys it listens on 127.0.0.1 only. "
            "--demo serves the offline demo's tiny model (no network, no GPU)."
        ),
    )
    cmd.add_argument("backend_name", nargs="?", metavar="BACKEND", help="backend to serve")
    _add_model_options(cmd, backend=None)
    group = cmd.add_argument_group("service")
    group.add_argument("--demo", action="store_true", help="serve the demo's tiny model offline")
    group.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    group.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    group.add_argument("--keys", type=Path, help="API key file (deskgen keys new NAME --keys FILE)")
    group.add_argument(
        "--data",
        type=Path,
        default=Path("deskgen-serve"),
        help="jobs folder (default: ./deskgen-serve)",
    )
    group.add_argument(
        "--results", help="results store: a folder or fsspec URL (default: DATA/results)"
    )
    group.add_argument(
        "--jobs", help="job store shared by several servers: a Redis URL (default: SQLite)"
    )
    group.add_argument(
        "--lease", type=float, default=30.0, help="seconds before a silent job runs elsewhere"
    )
    group.add_argument("--public-url", help="the address clients use, for result links")
    group.add_argument(
        "--url-ttl", type=int, default=3600, help="seconds result links live (default: 3600)"
    )
    group.add_argument(
        "--max-attempts", type=int, default=3, help="runs of a crashed job (default: 3)"
    )
    group.add_argument(
        "--max-upload-mb", type=float, default=20.0, help="largest image upload (default: 20)"
    )
    group.add_argument(
        "--max-images", type=int, default=4, help="largest n per request (default: 4)"
    )
    group.add_argument("--max-queue", type=int, default=1000, help="queued jobs refused beyond")
    group.add_argument(
        "--wait-timeout", type=float, default=600.0, help="seconds the Images API waits"
    )
    group.add_argument(
        "--drain-timeout", type=float, default=30.0, help="seconds to finish on SIGTERM"
    )
    group.add_argument("--threads", type=int, help="torch threads for the workers")
    group.add_argument("--cors-origin", action="append", default=[], help="allowed browser origin")
    group.add_argument(
        "--webhook-host", action="append", default=[], help="host webhooks may go to"
    )
    group.add_argument(
        "--mask-model", help="segmentation model for mask=auto (default: DeskMask's)"
    )
    group.add_argument(
        "--detector-model", help="Grounding DINO model of the open-vocabulary mask route"
    )
    group.add_argument("--sam-model", help="SAM model of the open-vocabulary mask route")
    group.add_argument("--log-prompts", action="store_true", help="put prompts in the log")
    cmd.set_defaults(handler=_cmd_serve, quiet_libraries="all")

    keys = sub.add_parser(
        "keys",
        help="create, list and remove API keys of deskgen serve",
        description="Only a key's hash is stored; a new key is printed once.",
    )
    keys.add_argument("action", choices=["new", "list", "remove", "webhook-secret"])
    keys.add_argument("name", nargs="?", help="the key's name (new, remove)")
    keys.add_argument("--keys", type=Path, help="the key file (TOML; new, list, remove)")
    keys.add_argument(
        "--data", type=Path, default=Path("deskgen-serve"), help="webhook-secret: serve's --data"
    )
    keys.add_argument("--jobs", help="webhook-secret: serve's --jobs (a Redis URL)")
    keys.add_argument("--requests-per-minute", type=int, help="rate limit of a new key")
    keys.add_argument("--max-concurrent-jobs", type=int, help="queued+running jobs of a new key")
    keys.set_defaults(handler=_cmd_keys, quiet_libraries=None)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .._exceptions import ConfigError

    backend = args.backend_name or args.backend or ("sdxl" if args.demo else None)
    if backend is None:
        raise ConfigError("Name the backend to serve, e.g. deskgen serve sdxl --model ID")
    model = args.model
    if args.demo:
        from .._registry import get_backend_class
        from ..demo import tiny_model, tiny_segmenter

        kind = get_backend_class(backend).profile.demo
        if kind is None or model is not None:
            raise ConfigError(
                "--demo serves the tiny sdxl, sd or sdxl-controlnet model, without --model"
            )
        model = str(tiny_model(kind))
        args.mask_model = args.mask_model or str(tiny_segmenter())
    devices = tuple(d.strip() for d in args.device.split(",") if d.strip())
    options = _checked_options(
        backend, model, devices[0] if devices else "auto", args.dtype, _generator_options(args)
    )
    from pydantic import ValidationError

    from .._generator import _format_validation_error
    from ..serve import ServeSettings, serve

    try:
        settings = ServeSettings(
            backend=backend,
            model=model,
            devices=devices,
            dtype=args.dtype,
            options=options,
            data=args.data,
            results=args.results,
            jobs=args.jobs,
            lease=args.lease,
            keys=args.keys,
            host=args.host,
            port=args.port,
            public_url=args.public_url,
            url_ttl=args.url_ttl,
            max_attempts=args.max_attempts,
            max_upload_bytes=int(args.max_upload_mb * 2**20),
            max_images=args.max_images,
            max_queue=args.max_queue,
            wait_timeout=args.wait_timeout,
            drain_timeout=args.drain_timeout,
            threads=args.threads,
            cors_origins=tuple(args.cors_origin),
            webhook_hosts=frozenset(args.webhook_host),
            mask_model=args.mask_model,
            detector_model=args.detector_model,
            sam_model=args.sam_model,
            log_prompts=args.log_prompts,
        )
    except ValidationError as exc:
        problems = _format_validation_error(exc, whole="serve")
        raise ConfigError(f"deskgen serve: {problems}") from None
    from ..serve._server import configure_logging

    configure_logging()
    print(
        f"deskgen serve: {backend} ({model or 'default model'}) on http://{args.host}:{args.port}",
        file=sys.stderr,
    )
    return serve(settings)


def _cmd_keys(args: argparse.Namespace) -> int:
    from .._exceptions import ConfigError
    from ..serve._keys import KeyRing, new_key, remove_key

    if args.action == "webhook-secret":  # for receivers: verify_webhook(bytes.fromhex(...))
        from ..serve._service import open_job_store

        if args.jobs is None and not (args.data / "jobs.sqlite3").is_file():
            raise ConfigError(f"No deskgen serve data in {args.data}: give serve's --data")
        store = open_job_store(args.jobs, args.data)
        try:
            print(store.secret("webhooks").hex())
        finally:
            store.close()
        return 0
    if args.keys is None:
        raise ConfigError(f"deskgen keys {args.action} needs --keys FILE")
    if args.action == "list":
        ring = KeyRing.load(args.keys)
        for name in ring.names:
            print(name)
        return 0
    if not args.name:
        raise ConfigError(f"deskgen keys {args.action} needs the key's NAME")
    if args.action == "remove":
        remove_key(args.keys, name=args.name)
        print(f"removed {args.name!r} from {args.keys}", file=sys.stderr)
        return 0
    token = new_key(
        args.keys,
        name=args.name,
        requests_per_minute=args.requests_per_minute,
        max_concurrent_jobs=args.max_concurrent_jobs,
    )
    print(f"new key {args.name!r} (shown once; {args.keys} keeps only its hash):", file=sys.stderr)
    print(token)
    return 0
