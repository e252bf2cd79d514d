"""`SQLiteJobStore`: jobs and events in one SQLite file (WAL), the one-machine default.

State transitions commit with ``synchronous=FULL`` (durable across a power cut once
acknowledged); step events go through a second connection with ``synchronous=NORMAL`` (WAL:
still safe across a process crash, and progress is redone anyway). One lock serialises every
statement, so the two connections never wait on each other.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from ._jobs import (
    FINAL,
    IdempotencyConflict,
    Job,
    JobError,
    JobEvent,
    JobImage,
    JobStore,
    NewJob,
)
from ._lifecycle import (
    LEASE_LOST,
    SERVER_RESTARTED,
    cancelled,
    claimed,
    expired,
    finished,
    requeued,
)

__all__ = ["SQLiteJobStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    idempotency_key TEXT,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    data TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (job_id, seq)
);
"""

_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class SQLiteJobStore(JobStore):
    """Jobs in ``path`` (created with its folder). Safe to share between threads.

    ```python
    store = SQLiteJobStore("data/jobs.sqlite3")
    ```
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = _connect(self.path, "FULL")
        self._db.executescript(_SCHEMA)
        self._fast = _connect(self.path, "NORMAL")

    # -- helpers -------------------------------------------------------------------------

    @contextmanager
    def _write(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction; ``durable=False``: on the NORMAL connection (progress, leases:
        losing the last ones to a power cut only re-runs work)."""
        conn = self._db if durable else self._fast
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @staticmethod
    def _job(row: tuple[Any, ...] | None) -> Job | None:
        if row is None:
            return None
        data, step, total = row
        return Job.model_validate_json(data).model_copy(update={"step": step, "total_steps": total})

    def _load(self, conn: sqlite3.Connection, job_id: str) -> Job | None:
        row = conn.execute(
            "SELECT data, step, total_steps FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        return self._job(row)

    @staticmethod
    def _save(conn: sqlite3.Connection, job: Job) -> None:
        conn.execute(
            "UPDATE jobs SET status = ?, step = ?, total_steps = ?, data = ? WHERE id = ?",
            (job.status, job.step, job.total_steps, job.model_dump_json(), job.id),
        )

    @staticmethod
    def _event(
        conn: sqlite3.Connection, job_id: str, kind: str, data: dict[str, Any] | None = None
    ) -> None:
        (last,) = conn.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?", (job_id,)
        ).fetchone()
        conn.execute(
            "INSERT INTO events (job_id, seq, type, data, time) VALUES (?, ?, ?, ?, ?)",
            (job_id, last + 1, kind, json.dumps(data or {}), time.time()),
        )

    # -- JobStore ------------------------------------------------------------------------

    def create(self, job: NewJob) -> tuple[Job, bool]:
        with self._write() as conn:
            if job.idempotency_key is not None:
                row = conn.execute(
                    "SELECT data, step, total_steps FROM jobs "
                    "WHERE owner = ? AND idempotency_key = ?",
                    (job.owner, job.idempotency_key),
                ).fetchone()
                first = self._job(row)
                if first is not None:
                    if first.body_sha256 != job.body_sha256:
                        raise IdempotencyConflict(first.id)
                    return first, False
            stored = Job(**job.model_dump())
            conn.execute(
                "INSERT INTO jobs (id, owner, status, idempotency_key, data) "
                "VALUES (?, ?, 'queued', ?, ?)",
                (stored.id, stored.owner, stored.idempotency_key, stored.model_dump_json()),
            )
            self._event(conn, stored.id, "queued")
            return stored, True

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._load(self._db, job_id)

    def lookup(self, owner: str, idempotency_key: str) -> Job | None:
        with self._lock:
            row = self._db.execute(
                "SELECT data, step, total_steps FROM jobs WHERE owner = ? AND idempotency_key = ?",
                (owner, idempotency_key),
            ).fetchone()
        return self._job(row)

    def claim(self, worker: str, *, lease: float) -> Job | None:
        with self._write() as conn:
            row = conn.execute(
                "SELECT data, step, total_steps FROM jobs WHERE status = 'queued' "
                "ORDER BY seq LIMIT 1"
            ).fetchone()
            job = self._job(row)
            if job is None:
                return None
            job, (kind, data) = claimed(job, worker, now=time.time(), lease=lease)
            self._save(conn, job)
            self._event(conn, job.id, kind, data)
            return job

    def heartbeat(self, job_id: str, worker: str, *, lease: float) -> bool:
        with self._write(durable=False) as conn:  # a lost lease only re-runs the job
            job = self._load(conn, job_id)
            alive = job is not None and job.status == "running" and job.worker == worker
            if job is not None and alive:
                self._save(conn, job.model_copy(update={"lease_until": time.time() + lease}))
        return alive

    def step(self, job_id: str, step: int, total: int) -> None:
        with self._write(durable=False) as conn:
            changed = conn.execute(
                "UPDATE jobs SET step = ?, total_steps = ? WHERE id = ? AND status = 'running'",
                (step, total, job_id),
            ).rowcount
            if changed:  # a stale worker's step of a job no longer running: no event
                self._event(conn, job_id, "step", {"step": step, "total_steps": total})

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
        with self._write() as conn:
            job = self._load(conn, job_id)
            if job is None:
                return None
            done = finished(
                job,
                status,
                now=time.time(),
                worker=worker,
                images=images,
                error=error,
                timings=timings,
                event=event,
            )
            if done is None:
                return None
            job, (kind, data) = done
            self._save(conn, job)
            self._event(conn, job_id, kind, data)
            return job

    def cancel(self, job_id: str) -> Job | None:
        with self._write() as conn:
            job = self._load(conn, job_id)
            if job is None:
                return None
            change = cancelled(job, now=time.time())
            if change is None:
                return job
            job, happened = change
            self._save(conn, job)
            if happened is not None:
                self._event(conn, job_id, *happened)
            return job

    def _requeue(self, conn: sqlite3.Connection, job: Job, reason: str, max_attempts: int) -> Job:
        job, (kind, data) = requeued(job, reason=reason, max_attempts=max_attempts, now=time.time())
        self._save(conn, job)
        self._event(conn, job.id, kind, data)
        return job

    def requeue(
        self, job_id: str, *, reason: str, max_attempts: int, worker: str | None = None
    ) -> Job | None:
        with self._write() as conn:
            job = self._load(conn, job_id)
            if job is None or job.status != "running":
                return None
            if worker is not None and job.worker != worker:
                return None
            return self._requeue(conn, job, reason, max_attempts)

    def recover(self, *, max_attempts: int, expired_only: bool = True) -> list[Job]:
        now = time.time()
        with self._write() as conn:
            rows = conn.execute(
                "SELECT data, step, total_steps FROM jobs WHERE status = 'running' ORDER BY seq"
            ).fetchall()
            jobs = [job for job in map(self._job, rows) if job is not None]
            if expired_only:
                jobs = [job for job in jobs if expired(job, now)]
            reason = LEASE_LOST if expired_only else SERVER_RESTARTED
            return [self._requeue(conn, job, reason, max_attempts) for job in jobs]

    def events(self, job_id: str, *, after: int = 0) -> list[JobEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, type, data, time FROM events WHERE job_id = ? AND seq > ? "
                "ORDER BY seq",
                (job_id, after),
            ).fetchall()
        return [
            JobEvent(seq=seq, type=kind, data=json.loads(data), time=at)
            for seq, kind, data, at in rows
        ]

    def position(self, job_id: str) -> int | None:
        with self._lock:
            row = self._db.execute(
                "SELECT seq FROM jobs WHERE id = ? AND status = 'queued'", (job_id,)
            ).fetchone()
            if row is None:
                return None
            (ahead,) = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND seq < ?", row
            ).fetchone()
        return int(ahead) + 1

    def queued(self) -> int:
        with self._lock:
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = 'queued'"
            ).fetchone()
        return int(count)

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        found = dict(rows)
        return {status: int(found.get(status, 0)) for status in _STATUSES}

    def active(self, owner: str) -> int:
        with self._lock:
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE owner = ? AND status IN ('queued', 'running')",
                (owner,),
            ).fetchone()
        return int(count)

    def webhook_done(self, job_id: str, *, ok: bool) -> None:
        with self._write() as conn:
            job = self._load(conn, job_id)
            if job is not None:
                self._save(
                    conn, job.model_copy(update={"webhook_state": "sent" if ok else "failed"})
                )

    def pending_webhooks(self) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                "SELECT data, step, total_steps FROM jobs WHERE status IN (?, ?, ?) ORDER BY seq",
                tuple(sorted(FINAL)),
            ).fetchall()
        jobs = [job for job in map(self._job, rows) if job is not None]
        return [job for job in jobs if job.webhook_state == "pending"]

    def secret(self, name: str) -> bytes:
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)",
                (name, secrets.token_bytes(32)),
            )
            (value,) = conn.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
        return bytes(value)

    def close(self) -> None:
        with self._lock:
            self._fast.close()
            self._db.close()
