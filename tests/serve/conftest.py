"""A real ``deskgen serve`` app on uvicorn, on 127.0.0.1, in a thread of the test process.

The backend is deskgen's pure-Python fake (``deskgen.testing``) unless a test gives another:
the HTTP server, the SQLite job store, the results folder and the workers are the real ones.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from deskgen.serve import ServeSettings, Service, create_app
from deskgen.testing import register_fake_backend

FAKE = "serve-fake"


@dataclass
class LiveServer:
    url: str
    service: Service
    settings: ServeSettings
    stop: Callable[[], None]

    @property
    def api(self) -> str:
        return self.url + "/v1"


def _bind() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """``live_server(**settings)``: start a server (stopped at the test's end)."""
    import uvicorn

    register_fake_backend(FAKE)
    started: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(*, wait_ready: bool = True, **fields: Any) -> LiveServer:
        fields.setdefault("backend", FAKE)
        fields.setdefault("data", tmp_path / f"data-{len(started)}")
        fields.setdefault("devices", ("cpu",))
        settings = ServeSettings(**fields)
        service = Service(settings)
        app = create_app(settings, service=service)
        sock = _bind()
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        started.append((server, thread))
        deadline = time.monotonic() + 60
        while not server.started or (wait_ready and not service.ready):
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        host, port = sock.getsockname()

        def stop() -> None:
            server.should_exit = True
            thread.join(60)

        return LiveServer(f"http://{host}:{port}", service, settings, stop)

    yield start
    for server, _ in started:
        server.should_exit = True
    for _, thread in started:
        thread.join(60)


def fake_backend(server: LiveServer, worker: int = 0) -> Any:
    """The `FakeBackend` instance a worker's generator runs (its step gate, its jobs)."""
    generator = server.service.workers[worker].generator
    assert generator is not None
    return generator.backend
