"""The job transitions every `JobStore` makes, as pure functions: old job in, new job and its
event out (or None where the transition does not apply). A store only has to load the job,
call one of these, and commit the result atomically; the rules (and the messages) are then the
same in every store.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from ._jobs import Job, JobError, JobImage

__all__ = [
    "LEASE_LOST",
    "SERVER_RESTARTED",
    "Event",
    "cancelled",
    "claimed",
    "expired",
    "finished",
    "redact",
    "requeued",
    "worker_lost",
]

Event = tuple[str, dict[str, Any]]
"""An event's type and data."""

LEASE_LOST = "its worker stopped renewing its lease"
"""The reason `JobStore.recover` gives for a job whose lease ran out."""
SERVER_RESTARTED = "the server stopped while the job ran"
"""The reason `JobStore.recover` gives with ``expired_only=False`` (the server restarted)."""


def _webhook(job: Job) -> Literal["pending", "none"]:
    return "pending" if job.webhook else "none"


def claimed(job: Job, worker: str, *, now: float, lease: float) -> tuple[Job, Event]:
    """A queued job, now running under ``worker`` until ``now + lease``."""
    job = job.model_copy(
        update={
            "status": "running",
            "started": now,
            "attempts": job.attempts + 1,
            "worker": worker,
            "lease_until": now + lease,
            "step": 0,
            "total_steps": 0,
        }
    )
    return job, ("started", {"attempt": job.attempts, "worker": worker})


def expired(job: Job, now: float) -> bool:
    """Whether a running job's lease ran out by ``now``."""
    return job.status == "running" and (job.lease_until is None or job.lease_until < now)


def finished(
    job: Job,
    status: Literal["succeeded", "failed", "cancelled"],
    *,
    now: float,
    worker: str | None = None,
    images: list[JobImage] | None = None,
    error: JobError | None = None,
    timings: dict[str, float] | None = None,
    event: dict[str, Any] | None = None,
) -> tuple[Job, Event] | None:
    """A running (or, for ``cancelled``, queued) job in its final state; None otherwise (and,
    with ``worker``, unless it runs under ``worker``)."""
    if job.final or (job.status == "queued" and status != "cancelled"):
        return None
    if worker is not None and (job.status != "running" or job.worker != worker):
        return None
    job = job.model_copy(
        update={
            "status": status,
            "finished": now,
            "lease_until": None,
            "images": images or [],
            "error": error,
            "timings": timings or {},
            "webhook_state": _webhook(job),
        }
    )
    return job, (status, event or {})


def cancelled(job: Job, *, now: float) -> tuple[Job, Event | None] | None:
    """A queued job cancelled (with its event), a running one flagged (no event); None for a
    final one (unchanged)."""
    if job.final:
        return None
    if job.status == "queued":
        job = job.model_copy(
            update={"status": "cancelled", "finished": now, "webhook_state": _webhook(job)}
        )
        return job, ("cancelled", {"while": "queued"})
    return job.model_copy(update={"cancel_requested": True}), None


def worker_lost(reason: str, attempts: int) -> JobError:
    """The error of a job that stopped ``attempts`` times without finishing."""
    return JobError(
        type="WorkerLostError",
        message=f"{reason}; gave up after {attempts} attempt(s). Submit it again, "
        "with fewer steps or a smaller size if it keeps stopping the server.",
    )


def requeued(job: Job, *, reason: str, max_attempts: int, now: float) -> tuple[Job, Event]:
    """A running job back in the queue, or failed once it ran ``max_attempts`` times."""
    if job.attempts >= max_attempts:
        error = worker_lost(reason, job.attempts)
        job = job.model_copy(
            update={
                "status": "failed",
                "finished": now,
                "lease_until": None,
                "error": error,
                "webhook_state": _webhook(job),
            }
        )
        return job, ("failed", {"error": error.model_dump()})
    job = job.model_copy(
        update={"status": "queued", "lease_until": None, "step": 0, "total_steps": 0}
    )
    return job, ("queued", {"requeued": reason, "attempts": job.attempts})


def redact(url: str) -> str:
    """``url`` without its password (in the netloc or a ``password=`` query option)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if "@" not in parts.netloc and "password" not in dict(parse_qsl(parts.query)):
        return url
    netloc = parts.netloc
    if "@" in netloc:
        auth, host = netloc.rsplit("@", 1)
        netloc = f"{auth.split(':', 1)[0]}:***@{host}" if ":" in auth else f"***@{host}"
    query = urlencode(
        [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)], safe="*"
    )
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
