"""Running the app on uvicorn: JSON logs, SIGTERM drains, a failed model load exits."""

from __future__ import annotations

import json
import logging
import socket
import sys
from types import FrameType
from typing import Any

from .._exceptions import DeskgenError
from ._app import create_app
from ._service import Service
from ._settings import ServeSettings

__all__ = ["JsonFormatter", "configure_logging", "serve"]

log = logging.getLogger("deskgen.serve")

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, message and the record's extra fields (job ids,
    owners, statuses; never a key, and a prompt only with ``log_prompts``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """deskgen's service log as JSON lines on stderr (uvicorn's own access log is off)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("deskgen.serve", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def serve(settings: ServeSettings, *, sock: socket.socket | None = None) -> int:
    """Serve until SIGTERM/SIGINT (drained) or a failed model load (exit code 1)."""
    import uvicorn

    failure: list[BaseException] = []
    server: uvicorn.Server | None = None

    def fatal(exc: BaseException) -> None:
        failure.append(exc)
        if server is not None:
            server.should_exit = True

    service = Service(settings, on_fatal=fatal)
    app = create_app(settings, service=service)

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # stop taking jobs at once; running ones drain in the app's lifespan
            service.begin_drain()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=int(settings.drain_timeout) + 5,
        lifespan="on",
    )
    server = _Server(config)
    if settings.keys is None:
        log.warning(
            "no API keys: listening on the loopback address only, for this machine's users; "
            "create keys with `deskgen keys new NAME --keys keys.toml` to serve a network",
            extra={"host": settings.host},
        )
    log.info("listening", extra={"host": settings.host, "port": settings.port})
    server.run(sockets=[sock] if sock is not None else None)
    if failure:
        exc = failure[0]
        if isinstance(exc, DeskgenError):
            raise exc
        raise RuntimeError(f"The model did not load: {type(exc).__name__}: {exc}") from exc
    return 0
