"""A real ``redis-server`` for tests: a subprocess on a unix socket in a temp folder.

It writes every change to its append-only file before answering (``appendfsync always``), so
`RedisServer.kill` (SIGKILL) then `RedisServer.start` on the same folder keeps everything a
client was told is written. Without ``redis-server`` on PATH the test is skipped, or fails
when ``CI=true`` (CI installs it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = ["RedisServer", "redis_server_binary"]


def _missing(message: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def redis_server_binary() -> str:
    """The path of ``redis-server`` (and redis-py is importable); skip without them, or fail
    when ``CI=true``."""
    if importlib.util.find_spec("redis") is None:
        _missing("redis-py is not installed (pip install redis)")
    found = shutil.which("redis-server")
    if found is None:
        _missing("redis-server is not installed (apt-get install redis-server)")
    return found


def _ping(path: Path) -> bool:
    """Whether the server at ``path`` answers PING (not while it loads its data)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """``redis-server`` on a unix socket (in a short temp folder: socket paths are limited
    to about 100 bytes), its data in ``folder``. `close` stops it and removes the socket."""

    def __init__(self, folder: Path) -> None:
        self._binary = redis_server_binary()
        self.folder = folder
        self.socket = Path(tempfile.mkdtemp(prefix="redis-")) / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, *, timeout: float = 30) -> RedisServer:
        assert self.process is None, "already running"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        args = [self._binary, "--port", "0", "--unixsocket", str(self.socket)]
        args += ["--unixsocketperm", "700", "--dir", str(self.folder), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always"]
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while not _ping(self.socket):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                text = (self.folder / "redis.log").read_text(errors="replace")
                raise RuntimeError(f"redis-server did not start:\n{text[-2000:]}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last save."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
            self.process = None

    def restart_after_crash(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.socket.parent, ignore_errors=True)
