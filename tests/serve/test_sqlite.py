"""`SQLiteJobStore`: the job lifecycle, idempotency, recovery after a crash, events."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from deskgen.serve import SQLiteJobStore
from deskgen.serve._jobs import IdempotencyConflict, JobError, JobImage, NewJob


def _new(job_id: str, *, owner: str = "a", key: str | None = None, body: str = "x") -> NewJob:
    return NewJob(
        id=job_id,
        owner=owner,
        fields={"prompt": "a desk"},
        idempotency_key=key,
        body_sha256=body,
    )


def test_jobs_run_oldest_first_and_finish_once(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    for name in ("j1", "j2", "j3"):
        store.create(_new(name))
    assert [store.position(name) for name in ("j1", "j2", "j3")] == [1, 2, 3]
    job = store.claim("w")
    assert job is not None and job.id == "j1" and job.status == "running" and job.attempts == 1
    assert store.position("j1") is None and store.position("j2") == 1
    store.step("j1", 2, 4)
    assert (store.get("j1").step, store.get("j1").total_steps) == (2, 4)  # type: ignore[union-attr]
    image = JobImage(index=0, key="results/j1/0.png", seed=5, width=8, height=8)
    done = store.finish("j1", status="succeeded", images=[image], timings={"total": 1.0})
    assert done is not None and done.images == [image]
    assert store.finish("j1", status="failed") is None  # final states stay
    assert store.finish("j2", status="succeeded") is None  # a queued job is not "done"
    assert store.counts() == {
        "queued": 2,
        "running": 0,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 0,
    }
    assert [event.type for event in store.events("j1")] == [
        "queued",
        "started",
        "step",
        "succeeded",
    ]
    assert [event.seq for event in store.events("j1", after=2)] == [3, 4]


def test_cancel_queued_now_running_at_the_next_step(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    store.create(_new("run"))
    store.create(_new("wait"))
    store.claim("w")
    assert store.cancel("wait").status == "cancelled"  # type: ignore[union-attr]
    flagged = store.cancel("run")
    assert flagged is not None and flagged.status == "running" and flagged.cancel_requested
    assert store.claim("w") is None  # the cancelled one never starts
    assert store.cancel("missing") is None


def test_idempotency_keys_per_owner(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    _first, created = store.create(_new("j1", key="k"))
    assert created
    again, created = store.create(_new("j2", key="k"))
    assert not created and again.id == "j1"
    with pytest.raises(IdempotencyConflict):
        store.create(_new("j3", key="k", body="other"))
    _, created = store.create(_new("j4", key="k", owner="b"))  # another owner's key space
    assert created
    assert store.lookup("a", "k").id == "j1"  # type: ignore[union-attr]
    assert store.active("a") == 1 and store.active("b") == 1


def test_recover_requeues_then_gives_up(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = SQLiteJobStore(path)
    store.create(_new("j1"))
    store.claim("w")
    store.close()
    for attempt in (1, 2):
        store = SQLiteJobStore(path)  # "restarted": the job was left running
        (job,) = store.recover(max_attempts=2)
        if attempt == 1:
            assert job.status == "queued"
            assert store.claim("w").attempts == 2  # type: ignore[union-attr]
            store.close()
    assert job.status == "failed" and job.error is not None
    assert "2 attempt" in job.error.message
    kinds = [event.type for event in store.events("j1")]
    assert kinds == ["queued", "started", "queued", "started", "failed"]


def test_webhook_states(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    store.create(NewJob(id="j1", owner="a", fields={}, webhook="http://127.0.0.1/x"))
    store.claim("w")
    store.finish("j1", status="failed", error=JobError(type="BackendError", message="m"))
    assert [job.id for job in store.pending_webhooks()] == ["j1"]
    store.webhook_done("j1", ok=True)
    assert store.pending_webhooks() == []
