"""`Service`: the job store, the results store, the workers and the keys behind the HTTP app.

The app only talks to a `Service`; the service owns the lifecycle: recover jobs a crash left
running, start the workers (weights load in their threads while ``/healthz`` answers), accept
jobs, wake the waiting requests and event streams, deliver webhooks, drain on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._errors import ApiError
from ._jobs import IdempotencyConflict, Job, JobStore, NewJob
from ._keys import ApiKey, KeyRing, RateLimiter
from ._metrics import Metrics
from ._requests import Submission
from ._results import ResultsStore
from ._settings import ServeSettings
from ._sqlite import SQLiteJobStore
from ._webhooks import WebhookSender
from ._worker import Worker

__all__ = ["LOCAL_OWNER", "Service", "Watch"]

log = logging.getLogger("deskgen.serve")

LOCAL_OWNER = "local"
"""Whose jobs they are on a server without keys."""


def open_job_store(jobs: str | None, data: Path) -> JobStore:
    """``deskgen serve``'s job store: Redis at ``jobs`` (a URL), else SQLite under ``data``."""
    if jobs is not None:
        from ._redis import RedisJobStore

        return RedisJobStore(jobs)
    return SQLiteJobStore(data / "jobs.sqlite3")


def _conflict(job_id: str) -> ApiError:
    return ApiError(
        409,
        f"This Idempotency-Key was used for another request (job {job_id}): use a new key "
        "for a new request",
        code="idempotency_key_reused",
    )


class Watch:
    """Wakes an asyncio task waiting on a job (an event stream, a synchronous request) when a
    worker thread changes it. Subscribe before reading the job, so no change is missed."""

    def __init__(self, waiters: _Waiters, job_id: str) -> None:
        self._waiters = waiters
        self.job_id = job_id
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        """Until the job changes, or ``timeout`` (another machine may have changed it)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout)
        self.event.clear()

    def __enter__(self) -> Watch:
        self._waiters.add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._waiters.discard(self)


class _Waiters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, set[Watch]] = {}

    def add(self, watch: Watch) -> None:
        with self._lock:
            self._waiting.setdefault(watch.job_id, set()).add(watch)

    def discard(self, watch: Watch) -> None:
        with self._lock:
            waiting = self._waiting.get(watch.job_id)
            if waiting is not None:
                waiting.discard(watch)
                if not waiting:
                    del self._waiting[watch.job_id]

    def notify(self, job_id: str) -> None:
        with self._lock:
            watches = list(self._waiting.get(job_id, ()))
        for watch in watches:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                watch.loop.call_soon_threadsafe(watch.event.set)


class Service:
    """Everything behind the app; `start` it, then `submit` jobs; `drain` stops it."""

    def __init__(
        self,
        settings: ServeSettings,
        *,
        store: JobStore | None = None,
        results: ResultsStore | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.settings = settings
        settings.data.mkdir(parents=True, exist_ok=True)
        self.store = store if store is not None else open_job_store(settings.jobs, settings.data)
        self.results = results if results is not None else ResultsStore(settings.results_url)
        self.keys = KeyRing.load(settings.keys) if settings.keys is not None else None
        self.limiter = RateLimiter()
        # kept in the job store, so every server sharing it signs alike; one secret per use
        self.link_secret = self.store.secret("links")
        self.webhook_secret = self.store.secret("webhooks")
        self.metrics = Metrics(self.store.counts)
        self.webhooks = WebhookSender(
            self.webhook_secret, allowed_hosts=settings.webhook_hosts, on_done=self._webhook_done
        )
        # lease holders' names: unique among every server sharing the store
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.workers = [
            Worker(self, name=f"{self.name}/{i}", device=device)
            for i, device in enumerate(settings.devices)
        ]
        self.draining = False
        self._drain_deadline: float | None = None
        self._stopped = threading.Event()
        self._keeper = threading.Thread(target=self._keep, name="deskgen-leases", daemon=True)
        self.started = time.time()
        self._on_fatal = on_fatal
        self._work = threading.Condition()
        self._waiters = _Waiters()
        self._cancels: dict[str, threading.Event] = {}
        self._cancels_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        # a store only this server uses: whatever ran when it stopped is lost; a shared one:
        # only jobs whose lease ran out (the others' servers are alive)
        self._recover(expired_only=self.store.shared)
        for job in self.store.pending_webhooks():
            self._send_webhook(job)
        self._set_threads()
        for worker in self.workers:
            worker.start()
        if self.store.shared:
            self._keeper.start()

    def _recover(self, *, expired_only: bool) -> None:
        for job in self.store.recover(
            max_attempts=self.settings.max_attempts, expired_only=expired_only
        ):
            log.warning(
                "job re-queued: its run was lost" if job.status == "queued" else "job given up",
                extra=self.job_log(job, attempt=job.attempts),
            )
            if job.final:
                self.job_finished(job)
            else:
                with self._work:
                    self._work.notify()

    def _keep(self) -> None:
        """With a shared store: re-queue other servers' jobs whose lease ran out."""
        while not self._stopped.wait(self.settings.lease / 2):
            try:
                self._recover(expired_only=True)
            except Exception:  # the store is unreachable now: the next round tries again
                log.warning("lease check failed", exc_info=True)

    def _set_threads(self) -> None:
        """Workers share the CPU: torch's intra-op threads split between them."""
        threads = self.settings.threads
        if threads is None and len(self.workers) > 1:
            threads = max(1, (os.cpu_count() or 1) // len(self.workers))
        if threads is not None:
            try:
                import torch
            except ImportError:
                return
            torch.set_num_threads(threads)

    @property
    def ready(self) -> bool:
        return bool(self.workers) and all(worker.ready for worker in self.workers)

    def worker_failed(self, worker: Worker, exc: BaseException) -> None:
        if self._on_fatal is not None:
            self._on_fatal(exc)

    def begin_drain(self) -> None:
        """Stop accepting and claiming jobs now (SIGTERM); ``drain_timeout`` counts from here."""
        if self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + self.settings.drain_timeout
        self.draining = True

    def drain(self) -> None:
        """Stop accepting jobs, give the running ones until ``drain_timeout`` after
        `begin_drain` to finish, re-queue the rest, stop the workers and the webhook sender."""
        self.begin_drain()
        self._stopped.set()
        for worker in self.workers:
            worker.stop(requeue=False)
        with self._work:
            self._work.notify_all()
        assert self._drain_deadline is not None
        deadline = self._drain_deadline
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        for worker in self.workers:
            worker.stop(requeue=True)
        for worker in self.workers:
            worker.join(30)
        self.webhooks.close()
        if self._keeper.is_alive():
            self._keeper.join(30)

    def close(self) -> None:
        self.store.close()

    # -- jobs ----------------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> ApiKey | None:
        """The caller's key (None on a server without keys), or a 401."""
        if self.keys is None:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        key = self.keys.authenticate(token.strip()) if scheme.lower() == "bearer" else None
        if key is None:
            raise ApiError(
                401,
                "Missing or wrong API key: send Authorization: Bearer <key> (the openai "
                "client's api_key=); keys come from `deskgen keys new`",
                type="invalid_request_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return key

    def submit(
        self,
        *,
        key: ApiKey | None,
        kind: str,
        submission: Submission,
        idempotency_key: str | None,
    ) -> tuple[Job, bool]:
        """Store the uploads, then the job: ``(job, created)``; a retry under the same
        ``Idempotency-Key`` gets the first job back without a new one."""
        owner = key.name if key is not None else LOCAL_OWNER
        digest = submission.digest(kind)
        if idempotency_key is not None:
            first = self.store.lookup(owner, idempotency_key)
            if first is not None:
                if first.body_sha256 != digest:
                    raise _conflict(first.id)
                return first, False
        if self.draining:
            raise ApiError(
                503,
                "The server is shutting down: retry in a moment",
                type="server_error",
                code="shutting_down",
                headers={"Retry-After": "5"},
            )
        if key is not None:
            retry = self.limiter.acquire(key)
            if retry is not None:
                raise ApiError(
                    429,
                    f"Rate limit of {key.requests_per_minute} requests per minute reached: "
                    f"retry in {retry:.0f} s",
                    type="rate_limit_error",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(max(1, round(retry)))},
                )
            limit = key.max_concurrent_jobs
            if limit is not None and self.store.active(owner) >= limit:
                raise ApiError(
                    429,
                    f"This key already has {limit} job(s) queued or running, its limit: wait "
                    "for one to finish",
                    type="rate_limit_error",
                    code="concurrent_jobs_exceeded",
                    headers={"Retry-After": "5"},
                )
        if self.store.queued() >= self.settings.max_queue:
            raise ApiError(
                503,
                "The queue is full: retry later",
                type="server_error",
                code="queue_full",
                headers={"Retry-After": "30"},
            )
        if submission.webhook is not None:
            try:
                self.webhooks.check_url(submission.webhook)
            except ValueError as exc:
                raise ApiError(400, str(exc), param="webhook_url") from None
        fields = self._server_models(submission.fields)
        job_id = f"job_{uuid.uuid4().hex}"
        inputs: dict[str, list[str]] = {}
        for name, files in submission.uploads.items():
            inputs[name] = []
            for i, data in enumerate(files):
                stored = f"inputs/{job_id}/{name}-{i}"
                self.results.put(stored, data)
                inputs[name].append(stored)
        new = NewJob(
            id=job_id,
            owner=owner,
            kind=kind,  # type: ignore[arg-type]
            fields=fields,
            inputs=inputs,
            webhook=submission.webhook,
            idempotency_key=idempotency_key,
            body_sha256=digest,
        )
        try:
            job, created = self.store.create(new)
        except BaseException as exc:
            self.results.delete_prefix(f"inputs/{job_id}/")
            if isinstance(exc, IdempotencyConflict):
                raise _conflict(exc.job_id) from None
            raise
        if not created:  # a concurrent retry won the race
            self.results.delete_prefix(f"inputs/{job_id}/")
            return job, False
        log.info("job queued", extra=self.job_log(job))
        with self._work:
            self._work.notify()
        return job, True

    def _server_models(self, fields: dict[str, Any]) -> dict[str, Any]:
        """A found mask uses the server's segmentation models: a request naming one would make
        the server open a folder or download weights of the caller's choosing."""
        settings = fields.get("desk_mask")
        if not isinstance(settings, dict):
            return fields
        for name in ("model", "sam_model", "revision"):
            if settings.get(name) is not None:
                raise ApiError(
                    400,
                    f"desk_mask.{name}: the server chooses the segmentation models (deskgen "
                    "serve --mask-model, --sam-model): leave it out",
                    param=f"desk_mask.{name}",
                )
        if settings.get("route") == "open-vocabulary":
            chosen = {
                "model": self.settings.detector_model,
                "sam_model": self.settings.sam_model,
            }
        else:  # the closed-set route takes no SAM model
            chosen = {"model": self.settings.mask_model}
        chosen = {name: value for name, value in chosen.items() if value is not None}
        return fields | {"desk_mask": settings | chosen}

    def wait_for_work(self, timeout: float) -> None:
        with self._work:
            self._work.wait(timeout)

    def job_for(self, key: ApiKey | None, job_id: str) -> Job:
        """The caller's job, or a 404 (also for another key's job: ids are not revealed)."""
        job = self.store.get(job_id)
        owner = key.name if key is not None else LOCAL_OWNER
        if job is None or job.owner != owner:
            raise ApiError(404, f"No job {job_id!r}", code="job_not_found")
        return job

    def cancel(self, job: Job) -> Job:
        cancelled = self.store.cancel(job.id) or job
        if cancelled.status == "running":
            self.cancel_local(job.id)
        if cancelled.status == "cancelled" and not job.final:
            self.job_finished(cancelled)
        self.notify(job.id)
        return cancelled

    def cancel_event(self, job_id: str) -> threading.Event:
        with self._cancels_lock:
            return self._cancels.setdefault(job_id, threading.Event())

    def cancel_local(self, job_id: str) -> None:
        self.cancel_event(job_id).set()

    def forget_cancel(self, job_id: str) -> None:
        with self._cancels_lock:
            self._cancels.pop(job_id, None)

    def job_finished(self, job: Job) -> None:
        self.metrics.finished.labels(job.status).inc()
        log.info(f"job {job.status}", extra=self.job_log(job))
        self.notify(job.id)
        if job.webhook_state == "pending":
            self._send_webhook(job)

    # -- waiting -------------------------------------------------------------------------

    def notify(self, job_id: str) -> None:
        self._waiters.notify(job_id)

    def watch(self, job_id: str) -> Watch:
        """``with service.watch(job_id) as watch:`` then read the job, ``await watch.wait()``."""
        return Watch(self._waiters, job_id)

    # -- webhooks and logs ---------------------------------------------------------------

    def _send_webhook(self, job: Job) -> None:
        if job.webhook is None:
            return
        from ._views import job_view

        payload = {"type": f"job.{job.status}", "job": job_view(job, position=None)}
        self.webhooks.send(delivery_id=job.id, url=job.webhook, payload=payload)

    def _webhook_done(self, job_id: str, ok: bool) -> None:
        self.store.webhook_done(job_id, ok=ok)

    def job_log(self, job: Job, **extra: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {"job": job.id, "owner": job.owner, "status": job.status}
        if self.settings.log_prompts:
            fields["prompt"] = job.fields.get("prompt")
        return fields | extra
