"""``deskgen serve`` over real HTTP: the official openai client, jobs, events, cancelling,
idempotent retries, keys and limits, bad uploads, health and metrics."""

from __future__ import annotations

import base64
import io
import json
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from deskgen import DeskGenerator
from deskgen._record import RECORD_KEY
from deskgen.serve import new_key, verify_webhook

from .conftest import FAKE, LiveServer, fake_backend

openai = pytest.importorskip("openai")

Start = Callable[..., LiveServer]


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _photo(size: tuple[int, int] = (48, 32)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _mask(size: tuple[int, int] = (48, 32)) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle([12, 8, 35, 27], fill=255)
    return mask


_B64 = base64.b64encode(_png(_photo())).decode()


def _client(server: LiveServer, key: str = "unused", **kwargs: Any) -> Any:
    return openai.OpenAI(base_url=server.api, api_key=key, max_retries=0, **kwargs)


def _decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _events(server: LiveServer, job_id: str, **headers: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    with httpx2.stream(
        "GET", f"{server.api}/jobs/{job_id}/events", headers=headers, timeout=30
    ) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in answer.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind is not None:
                events.append((kind, json.loads(line.removeprefix("data: "))))
    return events


def _wait(server: LiveServer, job_id: str, status: str, **headers: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = httpx2.get(f"{server.api}/jobs/{job_id}", headers=headers).json()
        if job["status"] == status:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never became {status}: {job}")


# -- the OpenAI Images API ---------------------------------------------------------------


def test_openai_client_generates_what_the_library_does(live_server: Start) -> None:
    server = live_server()
    answer = _client(server).images.generate(
        prompt="a tidy oak desk", n=2, size="32x24", extra_body={"seed": 7, "steps": 3}
    )
    assert [item.b64_json is not None for item in answer.data] == [True, True]
    images = [_decode(item.b64_json) for item in answer.data]
    with DeskGenerator(FAKE) as gen:
        direct = gen.generate(
            prompt="a tidy oak desk", num_images=2, width=32, height=24, seed=7, steps=3
        )
    for got, want in zip(images, direct.images, strict=True):
        assert got.size == (32, 24)
        assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(want))
    record = json.loads(images[1].text[RECORD_KEY])  # the PNG carries deskgen's record
    assert record["request"]["seed"] == 8 and record["request"]["steps"] == 3
    body = answer.to_dict()
    assert body["deskgen"]["seeds"] == [7, 8] and body["output_format"] == "png"


def test_openai_client_edits_the_desk_and_keeps_the_room(live_server: Start) -> None:
    server = live_server()
    photo, mask = _photo(), _mask()
    answer = _client(server).images.edit(
        image=("desk.png", _png(photo), "image/png"),
        mask=("mask.png", _png(mask), "image/png"),
        prompt="a walnut desk with a monitor arm",
        extra_body={"seed": 3, "strength": 0.9},
    )
    image = np.asarray(_decode(answer.data[0].b64_json).convert("RGB"))
    keep = np.asarray(mask) == 0
    assert image.shape[:2] == (32, 48)
    assert np.array_equal(image[keep], np.asarray(photo)[keep])  # outside: the photo itself
    assert not np.array_equal(image[~keep], np.asarray(photo)[~keep])


def test_lists_and_objects_in_an_edits_extra_body_arrive_whole(live_server: Start) -> None:
    # the client writes them as bracketed form fields: trigger_words[]=..., desk_mask[k]=...
    server = live_server()
    answer = _client(server).images.edit(
        image=("desk.png", _png(_photo()), "image/png"),
        prompt="a walnut desk",
        extra_body={
            "trigger_words": ["deskstyle", "walnut"],
            "remove_words": ["clutter"],
            "steps": 2,
        },
    )
    job = server.service.store.get(answer.deskgen["job_id"])  # type: ignore[attr-defined]
    assert job is not None and job.status == "succeeded"
    assert job.fields["trigger_words"] == ["deskstyle", "walnut"]
    assert job.fields["remove_words"] == ["clutter"]


def test_an_openai_style_transparent_mask_marks_the_area_to_edit(live_server: Start) -> None:
    server = live_server()
    photo, mask = _photo(), _mask()
    alpha = Image.new("RGBA", photo.size, (0, 0, 0, 255))
    alpha.putalpha(mask.point(lambda v: 0 if v else 255))  # OpenAI: transparent = edit
    answer = _client(server).images.edit(
        image=("desk.png", _png(photo), "image/png"),
        mask=("mask.png", _png(alpha), "image/png"),
        prompt="a desk",
        extra_body={"seed": 3},
    )
    image = np.asarray(_decode(answer.data[0].b64_json).convert("RGB"))
    keep = np.asarray(mask) == 0
    assert np.array_equal(image[keep], np.asarray(photo)[keep])


def test_url_answers_are_signed_links(live_server: Start) -> None:
    server = live_server()
    answer = _client(server).images.generate(prompt="a desk", response_format="url")
    url = answer.data[0].url
    assert url.startswith(server.url) and "signature=" in url
    got = httpx2.get(url)
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert RECORD_KEY in Image.open(io.BytesIO(got.content)).text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "a desk", "size": "big"}, "size"),
        ({"prompt": "a desk", "n": 99}, "n"),
        ({"prompt": "a desk", "steps": 0}, "steps"),
        ({"prompt": "a desk", "colour": "red"}, "colour"),
        ({"prompt": "a desk", "quality": "hd"}, "quality"),
        ({"prompt": "a desk", "model": "dall-e-3"}, "model"),
        ({"prompt": "a desk", "desk_mask": {"model": "/etc"}, "image": _B64}, "desk_mask.model"),
        ({"prompt": "a desk", "mask": "auto"}, "mask"),  # nothing to find a desk in
        ({"prompt": "a desk", "desk_mask": {}, "image": _B64, "mask": _B64}, "desk_mask"),
        ({"prompt": "a desk", "image": "/etc/passwd"}, "image"),
        ({"n": 1}, "prompt"),
    ],
)
def test_bad_fields_are_400_naming_the_field(
    live_server: Start, body: dict[str, Any], param: str
) -> None:
    server = live_server()
    with pytest.raises(openai.BadRequestError) as caught:
        _client(server).post("/images/generations", body=body, cast_to=object)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert "/etc" not in error["message"] and "Traceback" not in error["message"]


def test_the_server_picks_the_mask_models_of_each_route(live_server: Start) -> None:
    server = live_server(mask_model="seg", detector_model="dino", sam_model="sam")
    pick = server.service._server_models
    # the closed-set route takes no SAM model (DeskMask refuses one there)
    assert pick({"desk_mask": {}})["desk_mask"] == {"model": "seg"}
    assert pick({"desk_mask": {"route": "open-vocabulary"}})["desk_mask"] == {
        "route": "open-vocabulary",
        "model": "dino",
        "sam_model": "sam",
    }


def test_bad_uploads_are_refused_before_queueing(live_server: Start) -> None:
    server = live_server(max_upload_bytes=512 * 1024)
    client = _client(server)
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(image=("desk.png", b"not an image", "image/png"), prompt="a desk")
    assert caught.value.body["param"] == "image" and caught.value.body["code"] == "invalid_image"
    bomb = Image.new("L", (20000, 20000))  # 400 MP: over Pillow's limit, refused from the header
    big = io.BytesIO()
    bomb.save(big, format="PNG", optimize=True)
    assert len(big.getvalue()) < 512 * 1024
    with pytest.raises(openai.APIStatusError) as caught:
        client.images.edit(image=("bomb.png", big.getvalue(), "image/png"), prompt="a desk")
    assert caught.value.status_code == 413
    noise = _png(_photo((512, 512)))  # ~790 KB: over this server's 512 KiB upload limit
    with pytest.raises(openai.APIStatusError) as caught:
        client.images.edit(image=("desk.png", noise, "image/png"), prompt="a desk")
    assert caught.value.status_code == 413 and caught.value.body["param"] == "image"
    huge = httpx2.post(f"{server.api}/images/generations", content=b"x" * (4 * 2**20))
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    assert server.service.store.counts()["queued"] == 0
    assert fake_backend(server).jobs == []


def test_a_heic_photo_without_the_extra_is_400_naming_it(
    live_server: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = live_server()
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # a server installed without it
    body = b"ftypheic\x00\x00\x00\x00mif1heic"
    heic = struct.pack(">I", 4 + len(body)) + body + b"\x00" * 64
    with pytest.raises(openai.BadRequestError) as caught:  # the openai client: no retry
        _client(server).images.edit(image=("desk.heic", heic, "image/heic"), prompt="a desk")
    error = caught.value.body
    assert error["param"] == "image" and error["code"] == "invalid_image"
    assert "deskgen[heic]" in error["message"] and "convert the photo to JPEG" in error["message"]
    assert sum(server.service.store.counts().values()) == 0  # no job was made


def test_an_edit_without_a_photo_is_refused_before_it_runs(live_server: Start) -> None:
    server = live_server()
    answer = httpx2.post(f"{server.api}/images/edits", data={"prompt": "a desk"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "image"
    assert sum(server.service.store.counts().values()) == 0  # no job was made


def test_a_failed_job_answers_in_the_error_shape(live_server: Start) -> None:
    server = live_server(options={"fail_with": "boom at /home/someone/weights"})
    with pytest.raises(openai.InternalServerError) as caught:
        _client(server).images.generate(prompt="a desk")
    message = caught.value.body["message"]
    assert "/home" not in message and "Traceback" not in message


# -- jobs, events, cancelling --------------------------------------------------------------


def test_a_job_reports_its_events_in_order(live_server: Start) -> None:
    server = live_server()
    made = httpx2.post(f"{server.api}/jobs", json={"prompt": "a desk", "steps": 3, "seed": 1})
    assert made.status_code == 202
    body = made.json()
    assert made.headers["location"] == body["status_url"]
    events = _events(server, body["id"])
    kinds = [kind for kind, _ in events]
    assert kinds == ["queued", "started", "step", "step", "step", "succeeded"]
    assert [data["step"] for kind, data in events if kind == "step"] == [1, 2, 3]
    job = httpx2.get(body["status_url"]).json()
    assert job["status"] == "succeeded" and job["progress"] == {"step": 3, "total_steps": 3}
    assert job["timings"]["total"] > 0 and job["images"][0]["seed"] == 1
    png = httpx2.get(events[-1][1]["images"][0])
    assert json.loads(Image.open(io.BytesIO(png.content)).text[RECORD_KEY])["request"]["seed"] == 1
    # a reconnect with Last-Event-ID gets only what came after
    rest = _events(server, body["id"], **{"Last-Event-ID": "4"})
    assert [kind for kind, _ in rest] == ["step", "succeeded"]


def test_cancel_a_queued_job_and_a_running_one(live_server: Start) -> None:
    server = live_server()
    backend = fake_backend(server)
    gate = backend.step_gate = threading.Event()
    running = httpx2.post(f"{server.api}/jobs", json={"prompt": "first", "steps": 50}).json()
    queued = httpx2.post(f"{server.api}/jobs", json={"prompt": "second"}).json()
    _wait(server, running["id"], "running")
    second = httpx2.get(queued["status_url"]).json()
    assert second["status"] == "queued" and second["queue_position"] == 1
    assert httpx2.delete(queued["status_url"]).json()["status"] == "cancelled"
    flagged = httpx2.delete(running["status_url"]).json()
    assert flagged["status"] == "running" and flagged["cancel_requested"]
    gate.set()
    done = _wait(server, running["id"], "cancelled")
    assert done["progress"]["step"] < 50
    assert [job.prompt.prompt for job in backend.jobs] == ["first"]  # the second never started
    kinds = [kind for kind, _ in _events(server, running["id"])]
    assert kinds[0] == "queued" and kinds[-1] == "cancelled"


def test_a_cancelled_images_request_is_not_retried_as_a_new_job(live_server: Start) -> None:
    server = live_server()
    backend = fake_backend(server)
    gate = backend.step_gate = threading.Event()
    client = openai.OpenAI(base_url=server.api, api_key="unused")  # its default retries
    failure: list[BaseException] = []

    def call() -> None:
        try:
            client.images.generate(prompt="a desk", extra_body={"steps": 50})
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 30
    while not backend.jobs and time.monotonic() < deadline:
        time.sleep(0.02)
    job_id = server.service.workers[0].current
    assert job_id is not None
    assert httpx2.delete(f"{server.api}/jobs/{job_id}").json()["cancel_requested"]
    gate.set()
    thread.join(30)
    (error,) = failure
    assert isinstance(error, openai.APIStatusError) and error.status_code == 410
    assert sum(server.service.store.counts().values()) == 1  # no retry made a second job
    assert len(backend.jobs) == 1


def test_an_idempotent_retry_returns_the_first_job(live_server: Start) -> None:
    server = live_server()
    headers = {"Idempotency-Key": "retry-1"}
    first = httpx2.post(f"{server.api}/jobs", json={"prompt": "a desk"}, headers=headers).json()
    again = httpx2.post(f"{server.api}/jobs", json={"prompt": "a desk"}, headers=headers).json()
    assert again["id"] == first["id"]
    other = httpx2.post(f"{server.api}/jobs", json={"prompt": "a chair"}, headers=headers)
    assert other.status_code == 409
    _wait(server, first["id"], "succeeded")
    assert len(fake_backend(server).jobs) == 1
    # the openai client sends no Idempotency-Key of its own: a caller gives one for retries
    client = _client(server)
    answer = client.images.generate(prompt="a desk", extra_headers={"Idempotency-Key": "k2"})
    repeat = client.images.generate(prompt="a desk", extra_headers={"Idempotency-Key": "k2"})
    assert answer.data[0].b64_json == repeat.data[0].b64_json
    assert len(fake_backend(server).jobs) == 2


# -- keys and limits -----------------------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "keys.toml"
    return {
        "path": path,
        "a": new_key(path, name="team-a"),
        "b": new_key(path, name="team-b", requests_per_minute=2, max_concurrent_jobs=1),
    }


def test_keys_let_in_their_owners_only(live_server: Start, keys: dict[str, Any]) -> None:
    server = live_server(keys=keys["path"])
    with pytest.raises(openai.AuthenticationError):
        _client(server, key="dg-wrong").images.generate(prompt="a desk")
    assert httpx2.post(f"{server.api}/jobs", json={"prompt": "a desk"}).status_code == 401
    a = {"Authorization": f"Bearer {keys['a']}"}
    b = {"Authorization": f"Bearer {keys['b']}"}
    job = httpx2.post(f"{server.api}/jobs", json={"prompt": "a desk"}, headers=a).json()
    assert httpx2.get(job["status_url"], headers=b).status_code == 404  # not theirs
    assert httpx2.delete(job["status_url"], headers=b).status_code == 404
    assert _wait(server, job["id"], "succeeded", **a)["status"] == "succeeded"
    answer = _client(server, key=keys["a"]).images.generate(prompt="a desk", response_format="url")
    url = answer.data[0].url
    assert httpx2.get(url).status_code == 200  # a signed link needs no key
    assert httpx2.get(url.replace("signature=", "signature=0")).status_code == 401
    assert httpx2.get(url.split("?")[0], headers=b).status_code == 404


def test_rate_and_concurrency_limits_answer_429(live_server: Start, keys: dict[str, Any]) -> None:
    server = live_server(keys=keys["path"])
    fake_backend(server).step_gate = gate = threading.Event()
    b = {"Authorization": f"Bearer {keys['b']}"}
    assert httpx2.post(f"{server.api}/jobs", json={"prompt": "one"}, headers=b).status_code == 202
    busy = httpx2.post(f"{server.api}/jobs", json={"prompt": "two"}, headers=b)
    assert busy.status_code == 429 and busy.json()["error"]["code"] == "concurrent_jobs_exceeded"
    gate.set()
    limited = httpx2.post(f"{server.api}/jobs", json={"prompt": "three"}, headers=b)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"


def test_without_keys_only_loopback_is_allowed(tmp_path: Path) -> None:
    from deskgen.serve import ServeSettings

    with pytest.raises(ValueError, match="without API keys"):
        ServeSettings(backend=FAKE, host="0.0.0.0", data=tmp_path)


# -- webhooks, health, metrics ---------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[bytes, str]]]]:
    got: list[tuple[bytes, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((body, self.headers["deskgen-signature"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", got
    httpd.shutdown()


def test_a_job_webhook_is_signed(
    live_server: Start, receiver: tuple[str, list[tuple[bytes, str]]]
) -> None:
    url, got = receiver
    server = live_server(webhook_hosts=frozenset({"127.0.0.1"}))
    job = httpx2.post(f"{server.api}/jobs", json={"prompt": "a desk", "webhook_url": url}).json()
    _wait(server, job["id"], "succeeded")
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    body, signature = got[0]
    assert verify_webhook(server.service.webhook_secret, body, signature)
    payload = json.loads(body)
    assert payload["type"] == "job.succeeded" and payload["job"]["id"] == job["id"]
    refused = httpx2.post(
        f"{server.api}/jobs", json={"prompt": "a desk", "webhook_url": "http://10.0.0.1/x"}
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "webhook_url"


def test_health_readiness_and_metrics(live_server: Start) -> None:
    server = live_server()
    assert httpx2.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx2.get(f"{server.url}/readyz")
    assert ready.status_code == 200 and ready.json()["workers"][0]["ready"]
    _client(server).images.generate(prompt="a desk", extra_body={"steps": 2})
    text = httpx2.get(f"{server.url}/metrics").text
    assert 'deskgen_jobs_finished_total{status="succeeded"} 1.0' in text
    assert "deskgen_queue_depth 0.0" in text
    assert "deskgen_step_seconds_count 2.0" in text
    assert 'route="/v1/images/generations"' in text
    models = _client(server).models.list()
    assert [model.id for model in models.data] == [FAKE]
