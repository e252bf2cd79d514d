"""Signed job webhooks, sent from one background thread and retried with backoff.

Each delivery is a JSON ``POST`` with ``deskgen-signature: t=TIMESTAMP,v1=HMAC`` (hex
HMAC-SHA256 of ``f"{t}."`` + the body, with the server's secret; like Stripe's) and
``deskgen-delivery: ID``. Receivers check it with `verify`. Webhooks go only to the hosts the
server was started with (``--webhook-host``), so a job cannot make the server call anywhere
else, and redirects are not followed (they could point anywhere).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .._exceptions import ConfigError

__all__ = ["WebhookSender", "sign", "verify"]

log = logging.getLogger("deskgen.serve")

_MAX_BACKOFF = 60.0


def sign(secret: bytes, body: bytes, *, timestamp: int) -> str:
    """The ``deskgen-signature`` header value for ``body`` sent at ``timestamp`` (Unix s).

    The timestamp is signed with the body, so a captured delivery can't be replayed later.
    """
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(
    secret: bytes, body: bytes, header: str, *, tolerance: float = 300, now: float | None = None
) -> bool:
    """Whether ``header`` (a ``deskgen-signature`` value) signs exactly ``body`` with ``secret``
    and is at most ``tolerance`` seconds from ``now`` (default: the clock): what a webhook
    receiver checks, on the raw request body, before trusting a delivery.

    The comparison is constant-time; old (or far future) timestamps are refused so a captured
    delivery cannot be replayed.
    """
    fields = dict(part.strip().partition("=")[::2] for part in header.split(","))
    stamp, mac = fields.get("t", ""), fields.get("v1", "")
    if not (stamp.isascii() and stamp.isdigit()) or not mac.isascii():
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance:
        return False
    expected = sign(secret, body, timestamp=int(stamp)).partition(",v1=")[2]
    return hmac.compare_digest(expected.encode(), mac.encode())


def _host(url: str) -> str:
    """The URL's host, lowercased ("" when there is none or the URL can't be parsed)."""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:  # e.g. an unclosed "[" IPv6 host
        return ""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect: urllib then raises the 3xx as an `urllib.error.HTTPError`."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookSender:
    """Delivers webhooks in order from one daemon thread, each tried up to ``attempts`` times
    with backoff ``backoff``, 2x, 4x, ... seconds (at most 60 s); ``on_done(delivery_id, ok)``
    after it succeeds (a 2xx answer) or gives up.

    A delivery cut short by `close` gets no ``on_done``: it is still pending, to be sent again
    after a restart.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        attempts: int = 5,
        backoff: float = 1.0,
        timeout: float = 10.0,
        allowed_hosts: frozenset[str] = frozenset(),
        on_done: Callable[[str, bool], None] | None = None,
    ) -> None:
        if attempts < 1 or backoff < 0 or timeout <= 0:
            raise ConfigError(
                "WebhookSender: give attempts >= 1, backoff >= 0 and timeout > 0 "
                f"(got attempts={attempts}, backoff={backoff}, timeout={timeout})"
            )
        self._secret = secret
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = timeout
        self._hosts = frozenset(host.lower() for host in allowed_hosts)
        self._on_done = on_done
        self._queue: queue.Queue[tuple[str, str, bytes] | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._opener = urllib.request.build_opener(_NoRedirects)

    def check_url(self, url: str) -> None:
        """Refuse (`ConfigError`) a webhook URL that is not http(s) on an allowed host."""
        if not self._hosts:
            raise ConfigError(
                "This server sends no webhooks: start it with --webhook-host HOST for each "
                "host that receives them, or leave webhook_url out"
            )
        if (
            url.partition("://")[0].lower() not in ("http", "https")
            or _host(url) not in self._hosts
        ):
            raise ConfigError(
                "webhook_url: give an http:// or https:// URL on one of this server's webhook "
                f"hosts ({', '.join(sorted(self._hosts))})"
            )

    def send(self, *, delivery_id: str, url: str, payload: dict[str, Any]) -> None:
        """Queue a delivery of ``payload`` as JSON to ``url`` and return at once."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        with self._lock:
            if self._closed:  # still pending in the job store: sent again after a restart
                log.warning("webhook not queued: sender closed", extra={"job": delivery_id})
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="deskgen-webhooks", daemon=True
                )
                self._thread.start()
            self._queue.put((delivery_id, url, body))

    def _post(self, delivery_id: str, url: str, body: bytes) -> str | None:
        """POST once; None on a 2xx answer, else why not (status or error type, no URL)."""
        headers = {
            "Content-Type": "application/json",
            "deskgen-signature": sign(self._secret, body, timestamp=int(time.time())),
            "deskgen-delivery": delivery_id,
            "User-Agent": "deskgen-webhooks",
        }
        try:
            # http(s) only: check_url admitted the URL
            request = urllib.request.Request(  # noqa: S310
                url, data=body, headers=headers, method="POST"
            )
            with self._opener.open(request, timeout=self._timeout) as answer:
                status = int(answer.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return f"HTTP {exc.code}"
        except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError is an OSError
            return type(exc).__name__
        return None if 200 <= status < 300 else f"HTTP {status}"

    def _deliver(self, delivery_id: str, url: str, body: bytes) -> bool | None:
        """True when delivered, False when given up, None when `close` cut it short."""
        host = _host(url)
        for attempt in range(self._attempts):
            wait = min(_MAX_BACKOFF, self._backoff * 2 ** (attempt - 1)) if attempt else 0.0
            if self._stop.wait(wait):  # wait(0) just reads the flag
                return None
            failure = self._post(delivery_id, url, body)
            if failure is None:
                return True
            log.warning(
                "webhook not delivered",
                extra={"job": delivery_id, "host": host, "attempt": attempt + 1, "reason": failure},
            )
        log.error("webhook given up", extra={"job": delivery_id, "host": host})
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                return
            ok = self._deliver(*item)
            if ok is None:
                return
            if self._on_done is not None:
                try:
                    self._on_done(item[0], ok)
                except Exception:  # e.g. the job store closed under a late delivery
                    log.exception("webhook state not saved", extra={"job": item[0]})

    def close(self, timeout: float = 5.0) -> None:
        """Let pending deliveries finish for up to ``timeout`` seconds, then stop the thread
        (interrupting a backoff wait); later `send` calls are dropped."""
        with self._lock:
            thread, closed, self._closed = self._thread, self._closed, True
            if thread is not None and not closed:
                self._queue.put(None)
        if thread is not None:
            thread.join(timeout)
        self._stop.set()
        if thread is not None:
            thread.join(1.0)
