"""``deskgen serve`` as a process: SIGKILL mid-job loses nothing, SIGTERM drains, a model that
does not load exits 1, ``deskgen keys`` makes keys.

The server runs the real CLI (``deskgen.cli.main(["serve", ...])``) in a child process, on a
slow fake backend (registered in the child first), on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

pytest.importorskip("fastapi")

from deskgen.cli import main

pytestmark = pytest.mark.slow

_CHILD = """
import sys
from deskgen.testing import register_fake_backend
register_fake_backend("crash-fake")
from deskgen.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Server:
    def __init__(self, data: Path, *extra: str, step_seconds: float = 0.05) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["serve", "crash-fake", "--device", "cpu", "--data", str(data)]
        args += ["--port", str(self.port), "--option", f"step_seconds={step_seconds}", *extra]
        env = os.environ | {"HF_HUB_OFFLINE": "1"}
        self.log = data.parent / f"server-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, *args],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
            env=env,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx2.get(f"{self.url}/readyz").status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(httpx2.get(f"{self.url}/v1/jobs/{job_id}").json())

    def submit(self, **fields: Any) -> str:
        return str(httpx2.post(f"{self.url}/v1/jobs", json=fields).json()["id"])

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(60)


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    return tmp_path / "data"


def _until(server: _Server, job_id: str, done: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = server.job(job_id)
        if job["status"] in done:
            return job
        time.sleep(0.05)
    raise AssertionError(f"{job_id}: {job}")


def test_sigkill_mid_job_loses_no_accepted_job(data: Path) -> None:
    server = _Server(data)
    running = server.submit(prompt="the first desk", steps=40, seed=1)
    queued = [server.submit(prompt=f"desk {i}", steps=2, seed=i) for i in range(3)]
    _until(server, running, {"running"})
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    restarted = _Server(data, step_seconds=0.0)
    try:
        for job_id in [running, *queued]:
            job = _until(restarted, job_id, {"succeeded", "failed", "cancelled"})
            assert job["status"] == "succeeded", job
        first = restarted.job(running)
        assert first["attempts"] == 2 and first["images"][0]["seed"] == 1
        events = httpx2.get(f"{restarted.url}/v1/jobs/{running}/events").text
        assert "the server stopped while the job ran" in events
    finally:
        restarted.stop(signal.SIGTERM)


def test_a_job_that_keeps_killing_the_server_is_failed_with_the_reason(data: Path) -> None:
    job_id = ""
    for _attempt in range(2):
        server = _Server(data, "--max-attempts", "2")
        job_id = job_id or server.submit(prompt="a desk", steps=200)
        _until(server, job_id, {"running"})
        server.stop(signal.SIGKILL)
    server = _Server(data, "--max-attempts", "2")
    try:
        job = server.job(job_id)
        assert job["status"] == "failed" and job["attempts"] == 2
        assert "gave up after 2 attempt" in job["error"]["message"]
    finally:
        server.stop(signal.SIGTERM)


def test_sigterm_drains_finishing_the_running_job(data: Path) -> None:
    server = _Server(data, step_seconds=0.05)
    running = server.submit(prompt="a desk", steps=10)
    waiting = server.submit(prompt="a desk", steps=10)
    _until(server, running, {"running"})
    # uvicorn drains, then re-raises the signal: the exit status says SIGTERM, as it should
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert '"job succeeded"' in server.log.read_text()  # finished during the drain
    restarted = _Server(data, step_seconds=0.0)
    try:
        first = restarted.job(running)
        assert first["status"] == "succeeded" and first["attempts"] == 1  # finished in the drain
        assert _until(restarted, waiting, {"succeeded"})["status"] == "succeeded"
    finally:
        restarted.stop(signal.SIGTERM)


def test_a_model_that_does_not_load_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _free_port()
    args = ["serve", "sd", "--model", str(tmp_path / "missing"), "--device", "cpu"]
    code = main([*args, "--data", str(tmp_path / "data"), "--port", str(port)])
    assert code == 1
    assert "error:" in capsys.readouterr().err


def test_keys_command_makes_a_key_that_gets_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.toml"
    assert main(["keys", "new", "team-a", "--keys", str(path)]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("dg-") and token not in path.read_text()
    assert main(["keys", "list", "--keys", str(path)]) == 0
    assert capsys.readouterr().out.split() == ["team-a"]
    from deskgen.serve import KeyRing

    assert KeyRing.load(path).authenticate(token).name == "team-a"  # type: ignore[union-attr]


def test_keys_webhook_secret_prints_what_the_server_signs_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deskgen.serve import SQLiteJobStore

    data = tmp_path / "data"
    assert main(["keys", "webhook-secret", "--data", str(data)]) == 1  # no server data yet
    capsys.readouterr()
    data.mkdir()
    store = SQLiteJobStore(data / "jobs.sqlite3")
    secret = store.secret("webhooks")  # what the server's webhook sender is given
    store.close()
    assert main(["keys", "webhook-secret", "--data", str(data)]) == 0
    assert bytes.fromhex(capsys.readouterr().out.strip()) == secret


def test_two_servers_on_redis_a_killed_ones_job_finishes_on_the_other(tmp_path: Path) -> None:
    from .redis_server import RedisServer

    redis = RedisServer(tmp_path / "redis").start()
    shared = ["--jobs", redis.url, "--results", str(tmp_path / "results"), "--lease", "2"]
    servers: list[_Server] = []
    try:
        first = _Server(tmp_path / "a", *shared, step_seconds=0.2)
        servers.append(first)
        job_id = first.submit(prompt="a desk", steps=200, seed=3)  # 40 s on the first
        _until(first, job_id, {"running"})  # on the first: the only server yet
        second = _Server(tmp_path / "b", *shared, step_seconds=0.0)
        servers.append(second)
        seen = second.job(job_id)  # one store: the same job
        assert seen["status"] == "running" and seen["attempts"] == 1, seen
        first.stop(signal.SIGKILL)
        # its lease (2 s) runs out; the second server's lease check re-queues it, runs it
        done = _until(second, job_id, {"succeeded", "failed"}, timeout=60)
        assert done["status"] == "succeeded" and done["attempts"] == 2, done
        events = httpx2.get(f"{second.url}/v1/jobs/{job_id}/events").text
        assert "its worker stopped renewing its lease" in events
        png = httpx2.get(f"{second.url}/v1/jobs/{job_id}/images/0")
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    finally:
        for server in servers:
            if server.proc.poll() is None:
                server.stop(signal.SIGKILL)
        redis.close()
