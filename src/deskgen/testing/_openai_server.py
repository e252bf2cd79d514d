"""`FakeOpenAIServer`: a local HTTP server speaking the shapes of OpenAI's Images and Chat
Completions APIs, with scripted `FakeAnswer`s and the `FakeRequest`s it received."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from PIL import Image

__all__ = ["FakeAnswer", "FakeOpenAIServer", "FakeRequest"]


@dataclass
class FakeAnswer:
    status: int = 200
    body: Any = None
    """JSON body; ``None`` means a normal image answer for the request. The text
    `ECHO_KEY` (``"{api_key}"``) anywhere in it is replaced by the API key the request was sent
    with, as proxies that quote the key in their errors do."""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None
    """Bytes to answer with as they are, instead of a JSON body: a truncated or broken answer
    (``Content-Type`` is still ``application/json``)."""

    ECHO_KEY: ClassVar[str] = "{api_key}"


@dataclass
class FakeRequest:
    path: str
    headers: dict[str, str]
    json: dict[str, Any] | None
    parts: dict[str, tuple[str | None, bytes]]
    """Multipart fields: name -> (file name or None, raw bytes)."""


def _png_b64(size: tuple[int, int], colour: tuple[int, int, int] = (90, 120, 150)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class FakeOpenAIServer:
    """A real HTTP server on 127.0.0.1 speaking the shapes of OpenAI's Images and Chat
    Completions APIs, for offline tests of code that uses the ``openai`` backend.

    ```python
    with FakeOpenAIServer() as server:
        gen = DeskGenerator("openai", api_key="test", base_url=server.base_url)
        gen.generate(prompt="a desk")
        server.received[0].json["model"]       # what the client sent
        server.answers.append(FakeAnswer(429, {"error": {"message": "slow down"}}))
    ```
    Scripted `FakeAnswer`s are used in order; without one, image endpoints answer with small
    PNGs of the requested size / `scale` (16: small, fast; 1: the requested size, as OpenAI's)
    and chat completions with `description`.
    """

    def __init__(self, *, scale: int = 16) -> None:
        self.scale = scale
        """Image answers are the requested size divided by this."""
        self.answers: list[FakeAnswer] = []
        self.received: list[FakeRequest] = []
        self.files: dict[str, bytes] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                data = server.files.get(self.path)
                self.send_response(200 if data else 404)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                ctype = self.headers.get("Content-Type", "")
                body: dict[str, Any] | None = None
                parts: dict[str, tuple[str | None, bytes]] = {}
                if ctype.startswith("application/json"):
                    body = json.loads(raw)
                elif ctype.startswith("multipart/form-data"):
                    message = BytesParser(policy=HTTP).parsebytes(
                        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw
                    )
                    for part in message.iter_parts():
                        name = part.get_param("name", header="content-disposition")
                        payload = part.get_payload(decode=True)
                        data = payload if isinstance(payload, bytes) else b""
                        parts[str(name)] = (part.get_filename(), data)
                with server._lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    server.received.append(FakeRequest(self.path, headers, body, parts))
                    answer = server.answers.pop(0) if server.answers else FakeAnswer()
                if answer.delay:
                    time.sleep(answer.delay)
                if answer.raw is not None:
                    data = answer.raw
                else:
                    if answer.body is not None:
                        payload = answer.body
                    elif self.path.endswith("/chat/completions"):
                        payload = server.chat_answer(server.description)
                    else:
                        payload = server.image_answer(body, parts)
                    text = json.dumps(payload)
                    if answer.body is not None and FakeAnswer.ECHO_KEY in text:
                        key = headers.get("authorization", "").removeprefix("Bearer ")
                        text = text.replace(FakeAnswer.ECHO_KEY, json.dumps(key)[1:-1])
                    data = text.encode()
                # the client may have given up (a timeout test): nothing to answer then
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._answer(answer, data)

            def _answer(self, answer: FakeAnswer, data: bytes) -> None:
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in answer.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    description: dict[str, Any] = {  # noqa: RUF012
        "summary": "A cluttered wooden desk with a monitor and a laptop by a window.",
        "items": ["a monitor on a stand", "an open laptop", "a red mug", "tangled cables"],
        "keep": ["monitor on a stand", "laptop", "wooden desk"],
        "remove": ["tangled cables", "loose papers"],
        "style": "plain home office",
        "lighting": "daylight from a window on the left",
        "clutter": "high",
        "colours": ["warm wood", "off-white", "black"],
        "room": "a small home office with a window",
    }

    @staticmethod
    def chat_answer(content: Any) -> dict[str, Any]:
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "gpt-4o",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {
                        "role": "assistant",
                        "content": json.dumps(content) if content is not None else None,
                        "refusal": None,
                    },
                }
            ],
        }

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def image_answer(
        self, body: dict[str, Any] | None, parts: dict[str, tuple[str | None, bytes]]
    ) -> dict[str, Any]:
        fields = body or {k: v[1].decode() for k, v in parts.items() if v[0] is None}
        n = int(fields.get("n", 1))
        size = str(fields.get("size", "1024x1024"))
        w, h = (1024, 1024) if size == "auto" else map(int, size.split("x"))
        item: dict[str, Any] = {"b64_json": _png_b64((w // self.scale, h // self.scale))}
        if fields.get("model") == "dall-e-3":
            item["revised_prompt"] = "REVISED: " + str(fields.get("prompt", ""))[:40]
        return {"created": int(time.time()), "data": [item] * n}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
