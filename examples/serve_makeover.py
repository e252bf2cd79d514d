"""A makeover through ``deskgen serve`` with the official openai client.

Starts ``deskgen serve --demo`` (the offline demo's tiny model, on 127.0.0.1, its jobs in a
temporary folder), then, as any client would:

1. ``client.images.edit``: the sample desk photo with ``mask="auto"`` (only the desk is
   redrawn; the room is the photo's own pixels), answered in the Images API's shape;
2. ``POST /v1/jobs`` and its server-sent events: queued, started, step n/N, succeeded;
3. the job's PNG, which carries deskgen's record (seed, steps, model) in its text chunks.

Against a server you run yourself (``deskgen serve sdxl --model ID --keys keys.toml``)::

    python examples/serve_makeover.py --url http://127.0.0.1:8000 --key dg-...
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
from openai import OpenAI

from deskgen.demo import DEMO_PROMPT, sample_desk_photo


def _start_demo_server(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "deskgen", "serve", "--demo", "--device", "cpu"]
    command += ["--data", str(data), "--port", str(port)]
    server = subprocess.Popen(command, stderr=(data.parent / "server.log").open("wb"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # the first run builds the tiny models
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx2.get(f"{url}/readyz").status_code == 200:
                return server, url
        except httpx2.TransportError:
            pass
        time.sleep(0.2)
    server.kill()
    raise SystemExit(f"the server did not start: {(data.parent / 'server.log').read_text()}")


def makeover(url: str, key: str, out: Path) -> None:
    client = OpenAI(base_url=f"{url}/v1", api_key=key)
    photo = sample_desk_photo().read_bytes()

    # 1. the Images API: an edit of the photo, only the desk changed
    answer = client.images.edit(
        image=("desk.jpg", photo, "image/jpeg"),
        prompt=DEMO_PROMPT,
        extra_body={"mask": "auto", "seed": 42, "steps": 4},
    )
    png = base64.b64decode(answer.data[0].b64_json or "")
    (out / "makeover.png").write_bytes(png)
    job_id = answer.to_dict()["deskgen"]["job_id"]
    print(f"images.edit: {answer.size} PNG, job {job_id}")

    # 2. a job, followed by its events
    headers = {"Authorization": f"Bearer {key}"}
    job = httpx2.post(
        f"{url}/v1/jobs",
        json={"prompt": DEMO_PROMPT, "seed": 7, "steps": 4, "size": "64x48"},
        headers=headers,
    ).json()
    kinds = []
    with httpx2.stream("GET", job["events_url"], headers=headers, timeout=600) as events:
        for line in events.iter_lines():
            if line.startswith("event: "):
                kinds.append(line.removeprefix("event: "))
    print("events:", " ".join(kinds))

    # 3. its image, with the record that replays it
    state = httpx2.get(job["status_url"], headers=headers).json()
    image = httpx2.get(state["images"][0]["url"], headers=headers)
    (out / "job.png").write_bytes(image.content)
    from deskgen import read_record

    record = read_record(out / "job.png")
    print(json.dumps({"job": state["id"], "seed": record.seed, "steps": record.steps}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="a running deskgen serve (default: start the demo one)")
    parser.add_argument("--key", default="no-key", help="its API key")
    parser.add_argument("--out", default="serve-makeover", help="folder to write into")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.url:
        makeover(args.url, args.key, out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        server, url = _start_demo_server(Path(tmp) / "data")
        try:
            makeover(url, args.key, out)
        finally:
            server.send_signal(signal.SIGTERM)  # drains: running jobs finish first
            server.wait(60)


if __name__ == "__main__":
    main()
