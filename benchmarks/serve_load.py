"""``deskgen serve`` under load: throughput and latency against the library, and a SIGKILL.

1. **Saturation.** The same tiny SDXL (random weights, loaded from disk) serves ``--requests``
   txt2img requests twice: called directly (``DeskGenerator.generate`` then the PNG bytes with
   the record: what a caller of the library gets), and through ``deskgen serve`` (a separate
   process on 127.0.0.1) from ``--clients`` concurrent openai-style clients posting
   ``/v1/images/generations`` (``b64_json`` answers). One worker runs one request at a time
   either way, so at saturation the service's throughput over the library's is what the
   service adds: queueing, HTTP, SQLite commits, the results store, base64. Goal: the library's
   throughput / the service's <= 1.05. Printed: requests/s of each, the ratio, and the
   service's p50/p95/p99 latency (which includes waiting in the queue).
2. **Crash.** ``--clients`` clients submit jobs (``POST /v1/jobs``) for ``--seconds``; half way
   the server is SIGKILLed and restarted on the same data folder; afterwards every job that
   was accepted (answered 202) must reach ``succeeded``. Goal: accepted == finished.

Loopback only, bounded counts and time.

    .venv/bin/python benchmarks/serve_load.py [--requests 40] [--clients 4] [--steps 8]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import httpx2

PROMPT = "a tidy oak desk, a monitor arm, a plant, warm light"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, model: Path, data: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "deskgen", "serve", "sdxl", "--model", str(model)]
        command += ["--device", "cpu", "--data", str(data), "--port", str(port)]
        command += ["--max-queue", "100000"]
        self.log = data.parent / f"server-{port}-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen(command, stderr=self.log.open("wb"))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx2.get(f"{self.url}/readyz").status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"the server did not start:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(120)


def direct(model: Path, requests: int, steps: int) -> float:
    """Requests per second of the library itself (PNG bytes included)."""
    from deskgen import DeskGenerator
    from deskgen._record import png_bytes

    with DeskGenerator("sdxl", model=str(model), device="cpu") as gen:
        gen.generate(prompt=PROMPT, steps=steps, seed=0)  # warm-up
        started = time.perf_counter()
        for i in range(requests):
            result = gen.generate(prompt=PROMPT, steps=steps, seed=i)
            png_bytes(result, 0)
        return requests / (time.perf_counter() - started)


def served(url: str, requests: int, clients: int, steps: int) -> tuple[float, list[float]]:
    """Requests per second through the service, and each request's latency."""
    body = {"prompt": PROMPT, "steps": steps}
    httpx2.post(f"{url}/v1/images/generations", json=body | {"seed": 0}, timeout=600)
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        with httpx2.Client(timeout=600) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                start = time.perf_counter()
                answer = http.post(f"{url}/v1/images/generations", json=body | {"seed": i})
                took = time.perf_counter() - start
                with lock:
                    if answer.status_code == 200 and answer.json()["data"][0]["b64_json"]:
                        latencies.append(took)
                    else:
                        failures.append(answer.text[:200])

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return requests / wall, latencies


def crash(
    model: Path, data: Path, clients: int, seconds: float, steps: int, jobs: int
) -> dict[str, Any]:
    """Submit up to ``jobs`` jobs over ``seconds`` (paced) while the server is SIGKILLed and
    restarted half way; count what became of them."""
    port = _port()
    state: dict[str, Any] = {"server": Server(model, data, port), "accepted": [], "refused": 0}
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    pause = seconds * clients / jobs
    each = jobs // clients

    def client(n: int) -> None:
        i = 0
        with httpx2.Client(timeout=30) as http:
            while time.monotonic() < stop and i < each:
                body = {"prompt": PROMPT, "steps": steps, "seed": n * 100000 + i}
                try:
                    answer = http.post(f"{state['server'].url}/v1/jobs", json=body)
                except httpx2.TransportError:
                    answer = None
                with lock:
                    if answer is not None and answer.status_code == 202:
                        state["accepted"].append(answer.json()["id"])
                        i += 1  # refused attempts (the server down) don't count
                    else:
                        state["refused"] += 1
                time.sleep(pause)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(seconds / 2)
    state["server"].stop(signal.SIGKILL)
    killed_at = len(state["accepted"])
    state["server"] = Server(model, data, port)
    for thread in threads:
        thread.join()
    server = state["server"]
    statuses: dict[str, int] = {}
    deadline = time.monotonic() + 900
    pending = list(state["accepted"])
    while pending and time.monotonic() < deadline:
        still = []
        for job_id in pending:
            job = httpx2.get(f"{server.url}/v1/jobs/{job_id}").json()
            if job.get("status") in ("succeeded", "failed", "cancelled"):
                statuses[job["status"]] = statuses.get(job["status"], 0) + 1
            else:
                still.append(job_id)
        pending = still
        if pending:
            time.sleep(0.5)
    server.stop()
    return {
        "accepted": len(state["accepted"]),
        "accepted_before_kill": killed_at,
        "refused_while_down": state["refused"],
        "finished": statuses.get("succeeded", 0),
        "failed": statuses.get("failed", 0),
        "unfinished": len(pending),
    }


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the crash run")
    parser.add_argument("--crash-jobs", type=int, default=24, help="jobs of the crash run")
    parser.add_argument("--sample-size", type=int, default=64, help="latent size (px = 2x)")
    parser.add_argument("--only", choices=["saturation", "crash"], help="run one part")
    args = parser.parse_args()

    from deskgen.testing import make_tiny_pipeline

    folder = Path(tempfile.mkdtemp(prefix="deskgen-serve-bench-"))
    model = make_tiny_pipeline("sdxl", folder / "tiny-sdxl", sample_size=args.sample_size)
    if args.only != "crash":
        saturation(model, folder, args)
    if args.only != "saturation":
        figures = crash(
            model, folder / "crash-data", args.clients, args.seconds, args.steps, args.crash_jobs
        )
        print("crash run:", ", ".join(f"{k} {v}" for k, v in figures.items()))
        ok = figures["accepted"] == figures["finished"]
        print(f"goal accepted == finished: {'PASS' if ok else 'FAIL'}")


def saturation(model: Path, folder: Path, args: argparse.Namespace) -> None:
    library_before = direct(model, args.requests, args.steps)
    server = Server(model, folder / "data", _port())
    try:
        service, latencies = served(server.url, args.requests, args.clients, args.steps)
    finally:
        server.stop()
    library_after = direct(model, args.requests, args.steps)
    library = statistics.mean([library_before, library_after])
    ratio = library / service
    print(f"tiny SDXL {2 * args.sample_size} px, {args.steps} steps, {args.requests} requests")
    print(f"library: {library:.2f} req/s (runs: {library_before:.2f}, {library_after:.2f})")
    print(f"service: {service:.2f} req/s with {args.clients} clients")
    print(
        f"latency p50 {_pct(latencies, 0.5):.3f} s, p95 {_pct(latencies, 0.95):.3f} s, "
        f"p99 {_pct(latencies, 0.99):.3f} s"
    )
    verdict = "PASS" if ratio <= 1.05 else "FAIL"
    print(f"ratio library/service: {ratio:.3f}  goal <= 1.05: {verdict}")


if __name__ == "__main__":
    main()
