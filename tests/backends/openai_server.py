"""A real HTTP server on 127.0.0.1 that speaks the shapes of OpenAI's Images API, for tests.

The official client talks to it through ``base_url``: no network, no mocks inside the client.
Each test scripts the answers (status, headers, JSON, delay); the server records every request
it received (path, headers, JSON body or multipart parts) for the test to inspect.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image


@dataclass
class Answer:
    status: int = 200
    body: Any = None
    """JSON body; ``None`` means a normal image answer for the request."""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    json: dict[str, Any] | None
    parts: dict[str, tuple[str | None, bytes]]
    """Multipart fields: name -> (file name or None, raw bytes)."""


def png_b64(size: tuple[int, int], colour: tuple[int, int, int] = (90, 120, 150)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class FakeOpenAI:
    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.received: list[Received] = []
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
                        parts[str(name)] = (part.get_filename(), part.get_payload(decode=True))
                with server._lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    server.received.append(Received(self.path, headers, body, parts))
                    answer = server.answers.pop(0) if server.answers else Answer()
                if answer.delay:
                    time.sleep(answer.delay)
                if answer.body is not None:
                    payload = answer.body
                elif self.path.endswith("/chat/completions"):
                    payload = server.chat_answer(server.description)
                else:
                    payload = server.image_answer(body, parts)
                data = json.dumps(payload).encode()
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
        item: dict[str, Any] = {"b64_json": png_b64((w // 16, h // 16))}
        if fields.get("model") == "dall-e-3":
            item["revised_prompt"] = "REVISED: " + str(fields.get("prompt", ""))[:40]
        return {"created": int(time.time()), "data": [item] * n}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
