"""`WebhookSender` against a real HTTP receiver on 127.0.0.1; `sign` and `verify`."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deskgen._exceptions import ConfigError
from deskgen.serve._webhooks import WebhookSender, sign, verify

SECRET = b"test-secret"


@dataclass
class Receiver:
    url: str
    statuses: list[int]  # answers to give, in order; the last one repeats
    requests: list[tuple[str, Message, bytes]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Callable[[list[int]], Receiver]]:
    servers: list[ThreadingHTTPServer] = []

    def start(statuses: list[int]) -> Receiver:
        state = Receiver(url="", statuses=list(statuses))

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                state.requests.append((self.path, self.headers, body))
                status = state.statuses.pop(0) if len(state.statuses) > 1 else state.statuses[0]
                self.send_response(status)
                if status in (301, 302, 307, 308):
                    self.send_header("Location", f"{state.url}/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
        state.url = f"http://127.0.0.1:{server.server_address[1]}"
        return state

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


class Done:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.event = threading.Event()

    def __call__(self, delivery_id: str, ok: bool) -> None:
        self.calls.append((delivery_id, ok))
        self.event.set()

    def wait(self) -> list[tuple[str, bool]]:
        assert self.event.wait(5), "on_done was not called"
        return self.calls


def _sender(done: Done, *, attempts: int = 3, backoff: float = 0.01) -> WebhookSender:
    return WebhookSender(
        SECRET,
        attempts=attempts,
        backoff=backoff,
        timeout=2.0,
        allowed_hosts=frozenset({"127.0.0.1"}),
        on_done=done,
    )


def test_delivery_is_signed(receiver: Callable[[list[int]], Receiver]) -> None:
    rx = receiver([200])
    done = Done()
    sender = _sender(done)
    payload = {"type": "job.succeeded", "job": {"id": "J1", "prompt": "ünïcode"}}
    sender.check_url(rx.url + "/hook")
    sender.send(delivery_id="J1", url=rx.url + "/hook", payload=payload)
    assert done.wait() == [("J1", True)]
    sender.close()

    [(path, headers, body)] = rx.requests
    assert path == "/hook"
    assert body == json.dumps(payload, separators=(",", ":")).encode()
    assert json.loads(body) == payload
    assert headers["Content-Type"] == "application/json"
    assert headers["deskgen-delivery"] == "J1"
    assert headers["User-Agent"] == "deskgen-webhooks"
    assert verify(SECRET, body, headers["deskgen-signature"])
    assert not verify(b"other-secret", body, headers["deskgen-signature"])
    assert SECRET.decode() not in str(headers.items())


def test_retried_until_it_succeeds(receiver: Callable[[list[int]], Receiver]) -> None:
    rx = receiver([500, 500, 200])
    done = Done()
    sender = _sender(done, attempts=5)
    sender.send(delivery_id="J2", url=rx.url, payload={"n": 1})
    assert done.wait() == [("J2", True)]
    sender.close()
    assert len(rx.requests) == 3
    assert len({body for _, _, body in rx.requests}) == 1


def test_given_up_after_attempts(receiver: Callable[[list[int]], Receiver]) -> None:
    rx = receiver([500])
    done = Done()
    sender = _sender(done, attempts=3)
    sender.send(delivery_id="J3", url=rx.url, payload={})
    assert done.wait() == [("J3", False)]
    sender.close()
    assert len(rx.requests) == 3


def test_redirects_not_followed(receiver: Callable[[list[int]], Receiver]) -> None:
    rx = receiver([302])
    done = Done()
    sender = _sender(done, attempts=2)
    sender.send(delivery_id="J4", url=rx.url + "/hook", payload={})
    assert done.wait() == [("J4", False)]
    sender.close()
    assert [path for path, _, _ in rx.requests] == ["/hook", "/hook"]  # never /elsewhere


def test_no_receiver_is_a_failure() -> None:
    done = Done()
    sender = _sender(done, attempts=2)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sender.send(delivery_id="J5", url=f"http://127.0.0.1:{port}/", payload={})
    assert done.wait() == [("J5", False)]
    sender.close()


def test_close_interrupts_backoff(receiver: Callable[[list[int]], Receiver]) -> None:
    rx = receiver([500])
    done = Done()
    sender = _sender(done, attempts=5, backoff=30.0)
    sender.send(delivery_id="J6", url=rx.url, payload={})
    deadline = time.monotonic() + 5
    while not rx.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    sender.close(timeout=0.1)
    assert time.monotonic() - start < 2
    assert done.calls == []  # cut short: still pending, sent again after a restart
    sender.send(delivery_id="J7", url=rx.url, payload={})  # dropped after close
    assert len(rx.requests) == 1


def test_check_url() -> None:
    with pytest.raises(ConfigError, match="--webhook-host HOST"):
        WebhookSender(SECRET).check_url("https://hooks.example.com/x")
    sender = WebhookSender(SECRET, allowed_hosts=frozenset({"Hooks.Example.com"}))
    sender.check_url("https://hooks.example.com/x")
    sender.check_url("http://HOOKS.example.COM:8080/x?a=1")
    for url in [
        "ftp://hooks.example.com/x",
        "file:///etc/passwd",
        "https://evil.example.com/x",
        "https://hooks.example.com.evil.com/x",
        "https://hooks.example.com@evil.com/x",
        "hooks.example.com/x",
        "https://[::1/x",
        "",
    ]:
        with pytest.raises(ConfigError, match=r"hooks\.example\.com"):
            sender.check_url(url)


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="attempts >= 1"):
        WebhookSender(SECRET, attempts=0)


def test_verify() -> None:
    body = b'{"a":1}'
    header = sign(SECRET, body, timestamp=1_000_000)
    assert header.startswith("t=1000000,v1=")
    assert verify(SECRET, body, header, now=1_000_100)
    assert not verify(SECRET, b'{"a":2}', header, now=1_000_100)  # tampered body
    assert not verify(SECRET, body, header, now=1_000_301)  # too old
    assert not verify(SECRET, body, header, now=1_000_000 - 301)  # from the future
    assert verify(SECRET, body, header, now=1_000_500, tolerance=600)
    assert not verify(SECRET, body, header.replace("t=1000000", "t=1000001"), now=1_000_000)
    for bad in ["", "garbage", "t=abc,v1=00", "v1=00", "t=1000000", "t=1000000,v1=ü"]:
        assert not verify(SECRET, body, bad, now=1_000_000)
    assert verify(SECRET, body, sign(SECRET, body, timestamp=int(time.time())))
