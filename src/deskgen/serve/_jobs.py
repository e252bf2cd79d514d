"""Jobs, their events, and the store they live in (`JobStore`; SQLite on one machine).

A job's life::

    queued ──claim──▶ running ──▶ succeeded | failed | cancelled
      │                  │
      └──cancel──▶ cancelled    └──crash / drain──▶ queued again (or failed after N attempts)

A job is created (and answered 202) only once the store has committed it, with its uploads
already in the results store; every transition is a committed write, so a crash loses nothing
that was acknowledged.
"""

from __future__ import annotations

import abc
import time
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "FINAL",
    "IdempotencyConflict",
    "Job",
    "JobError",
    "JobEvent",
    "JobImage",
    "JobStatus",
    "JobStore",
    "NewJob",
]

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
EventType = Literal["queued", "started", "step", "preview", "succeeded", "failed", "cancelled"]


class JobError(BaseModel):
    """Why a job failed: the deskgen error's class name and its message (which says the fix)."""

    model_config = ConfigDict(frozen=True)

    type: str
    message: str
    retryable: bool = False


class JobImage(BaseModel):
    """One result image: where it is stored and the seed it was made with."""

    model_config = ConfigDict(frozen=True)

    index: int
    key: str
    seed: int
    width: int
    height: int


class NewJob(BaseModel):
    """What a client submitted, checked, with its uploads stored under ``inputs``."""

    model_config = ConfigDict(frozen=True)

    id: str
    owner: str
    kind: Literal["job", "generation", "edit"] = "job"
    fields: dict[str, Any]
    """The request's JSON fields (`GenerationRequest` fields, no images)."""
    inputs: dict[str, list[str]] = Field(default_factory=dict)
    """Stored uploads by field (``image``, ``mask``, ``control_image``, ``references``)."""
    webhook: str | None = None
    idempotency_key: str | None = None
    body_sha256: str = ""


class Job(NewJob):
    """A job as stored: the submission plus its state."""

    status: JobStatus = "queued"
    created: float = Field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    attempts: int = 0
    worker: str | None = None
    """The worker running it (or that ran it last)."""
    lease_until: float | None = None
    """While running: the time (``time.time()``) by which its worker must renew the lease,
    or the job counts as lost and is re-queued (`JobStore.recover`)."""
    step: int = 0
    total_steps: int = 0
    cancel_requested: bool = False
    error: JobError | None = None
    images: list[JobImage] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    webhook_state: Literal["none", "pending", "sent", "failed"] = "none"

    @property
    def final(self) -> bool:
        return self.status in FINAL


class JobEvent(BaseModel):
    """One event of a job, numbered in order from 1 (the SSE ``id``)."""

    model_config = ConfigDict(frozen=True)

    seq: int
    type: EventType
    data: dict[str, Any] = Field(default_factory=dict)
    time: float


class IdempotencyConflict(Exception):
    """The same ``Idempotency-Key`` came with a different body (answered 409)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class JobStore(abc.ABC):
    """Where jobs and their events live. Every method is safe to call from any thread.

    A running job is leased to its worker: the worker renews the lease (`heartbeat`) while it
    runs, and a job whose lease ran out (its machine died) is re-queued by `recover`, which
    every server calls now and then. A store one server owns (`shared` False: SQLite) also
    re-queues every running job when that server starts, without waiting for leases.
    """

    shared: ClassVar[bool] = False
    """Whether several servers may use the store at once (their leases tell who is alive)."""

    @abc.abstractmethod
    def create(self, job: NewJob) -> tuple[Job, bool]:
        """Store a new queued job and its ``queued`` event; ``(job, True)``.

        With an idempotency key that ``job.owner`` used before: ``(first job, False)`` when
        the body is the same, `IdempotencyConflict` when it differs.
        """

    @abc.abstractmethod
    def get(self, job_id: str) -> Job | None: ...

    @abc.abstractmethod
    def lookup(self, owner: str, idempotency_key: str) -> Job | None:
        """The job ``owner`` created under ``idempotency_key``, if any."""

    @abc.abstractmethod
    def claim(self, worker: str, *, lease: float) -> Job | None:
        """The oldest queued job, now running under ``worker`` (attempts + 1, a ``started``
        event, leased for ``lease`` seconds), or None."""

    @abc.abstractmethod
    def heartbeat(self, job_id: str, worker: str, *, lease: float) -> bool:
        """Renew ``worker``'s lease on its running job for ``lease`` seconds from now; False
        when the job is no longer running under ``worker`` (its lease ran out and it was
        re-queued, or it was finished): the worker then stops it."""

    @abc.abstractmethod
    def step(self, job_id: str, step: int, total: int) -> None:
        """Record progress and a ``step`` event of a running job (nothing for any other); need
        not be durable: progress is redone."""

    @abc.abstractmethod
    def finish(
        self,
        job_id: str,
        *,
        status: Literal["succeeded", "failed", "cancelled"],
        worker: str | None = None,
        images: list[JobImage] | None = None,
        error: JobError | None = None,
        timings: dict[str, float] | None = None,
        event: dict[str, Any] | None = None,
    ) -> Job | None:
        """Move a running (or, for ``cancelled``, queued) job to a final state with its event;
        None when it was already final (a cancel that lost the race) or, with ``worker``, when
        it no longer runs under that worker (its lease ran out: another worker has it)."""

    @abc.abstractmethod
    def cancel(self, job_id: str) -> Job | None:
        """Cancel: a queued job becomes ``cancelled`` now, a running one is flagged (the worker
        stops at the next step); a final one is returned unchanged."""

    @abc.abstractmethod
    def requeue(
        self, job_id: str, *, reason: str, max_attempts: int, worker: str | None = None
    ) -> Job | None:
        """A running job (with ``worker``: running under that worker) back to the queue (a
        ``queued`` event with the reason), or failed when it already ran ``max_attempts``
        times; None when it was not running (under ``worker``)."""

    @abc.abstractmethod
    def recover(self, *, max_attempts: int, expired_only: bool = True) -> list[Job]:
        """Running jobs whose lease ran out (with ``expired_only=False``: every running job,
        as after the restart of the one server of an unshared store) re-queued, or failed
        after ``max_attempts`` runs (`requeue`)."""

    @abc.abstractmethod
    def events(self, job_id: str, *, after: int = 0) -> list[JobEvent]: ...

    @abc.abstractmethod
    def position(self, job_id: str) -> int | None:
        """1 for the next job to run; None unless queued."""

    @abc.abstractmethod
    def queued(self) -> int:
        """How many jobs wait (the queue-full check of every submission: keep it cheap)."""

    @abc.abstractmethod
    def counts(self) -> dict[str, int]:
        """Jobs by status (every status present, 0 where none)."""

    @abc.abstractmethod
    def active(self, owner: str) -> int:
        """The owner's queued and running jobs (the concurrent-job limit)."""

    @abc.abstractmethod
    def webhook_done(self, job_id: str, *, ok: bool) -> None: ...

    @abc.abstractmethod
    def pending_webhooks(self) -> list[Job]:
        """Final jobs whose webhook was not delivered yet (sent again after a restart)."""

    @abc.abstractmethod
    def secret(self, name: str) -> bytes:
        """The 32-byte random secret ``name`` (``"links"``, ``"webhooks"``), made on first use,
        the same for every server of the store (whoever makes it first, atomically): a link
        one server signed opens on another, and webhook receivers know one secret."""

    @abc.abstractmethod
    def close(self) -> None: ...
