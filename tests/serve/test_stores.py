"""The `JobStore` contract, for every store: SQLite (one file) and Redis (a real redis-server).

Lifecycle, idempotency, leases and recovery, counts, events, webhooks; two store objects on
the same data racing claims from several threads; a Redis SIGKILL keeping what was written.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from deskgen import AuthenticationError, ConfigError, ServiceTimeoutError
from deskgen.serve import SQLiteJobStore
from deskgen.serve._jobs import IdempotencyConflict, JobError, JobImage, JobStore, NewJob

from .redis_server import RedisServer

Opener = Callable[[], JobStore]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.close()


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """``open_store()``: another store object on the same data (a file, a Redis prefix)."""
    opened: list[JobStore] = []
    prefix = f"test-{uuid.uuid4().hex[:12]}"  # a fresh key space on the module's server

    def open_store() -> JobStore:
        if request.param == "sqlite":
            store: JobStore = SQLiteJobStore(tmp_path / "jobs.sqlite3")
        else:
            server: RedisServer = request.getfixturevalue("redis_server")  # or skip
            from deskgen.serve._redis import RedisJobStore

            store = RedisJobStore(server.url, prefix=prefix)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Opener) -> JobStore:
    return open_store()


def _new(
    job_id: str,
    *,
    owner: str = "a",
    key: str | None = None,
    body: str = "x",
    webhook: str | None = None,
) -> NewJob:
    return NewJob(
        id=job_id,
        owner=owner,
        fields={"prompt": "a desk"},
        idempotency_key=key,
        body_sha256=body,
        webhook=webhook,
    )


def test_jobs_run_oldest_first_and_finish_once(store: JobStore) -> None:
    for name in ("j1", "j2", "j3"):
        store.create(_new(name))
    assert [store.position(name) for name in ("j1", "j2", "j3")] == [1, 2, 3]
    job = store.claim("w", lease=60)
    assert job is not None and job.id == "j1" and job.status == "running" and job.attempts == 1
    assert store.position("j1") is None and store.position("j2") == 1
    store.step("j1", 2, 4)
    assert (store.get("j1").step, store.get("j1").total_steps) == (2, 4)  # type: ignore[union-attr]
    image = JobImage(index=0, key="results/j1/0.png", seed=5, width=8, height=8)
    done = store.finish("j1", status="succeeded", images=[image], timings={"total": 1.0})
    assert done is not None and done.images == [image] and done.timings == {"total": 1.0}
    assert store.get("j1") == done
    assert store.finish("j1", status="failed") is None  # final states stay
    assert store.finish("j2", status="succeeded") is None  # a queued job is not "done"
    assert store.counts() == {
        "queued": 2,
        "running": 0,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 0,
    }
    events = store.events("j1")
    assert [event.type for event in events] == ["queued", "started", "step", "succeeded"]
    assert [event.seq for event in events] == [1, 2, 3, 4]
    assert events[1].data == {"attempt": 1, "worker": "w"}
    assert events[2].data == {"step": 2, "total_steps": 4}
    assert [event.seq for event in store.events("j1", after=2)] == [3, 4]
    assert store.events("missing") == [] and store.get("missing") is None


def test_cancel_queued_now_running_at_the_next_step(store: JobStore) -> None:
    store.create(_new("run"))
    store.create(_new("wait"))
    store.claim("w", lease=60)
    assert store.cancel("wait").status == "cancelled"  # type: ignore[union-attr]
    assert store.events("wait")[-1].data == {"while": "queued"}
    flagged = store.cancel("run")
    assert flagged is not None and flagged.status == "running" and flagged.cancel_requested
    assert store.get("run").cancel_requested  # type: ignore[union-attr]
    assert store.claim("w", lease=60) is None  # the cancelled one never starts
    assert store.cancel("missing") is None
    done = store.finish("run", status="cancelled", event={"step": 3})
    assert done is not None and store.events("run")[-1].data == {"step": 3}
    assert store.cancel("run") == done  # final: unchanged
    assert store.counts()["cancelled"] == 2 and store.active("a") == 0


def test_idempotency_keys_per_owner(store: JobStore) -> None:
    _first, created = store.create(_new("j1", key="k"))
    assert created
    again, created = store.create(_new("j2", key="k"))
    assert not created and again.id == "j1"
    with pytest.raises(IdempotencyConflict) as conflict:
        store.create(_new("j3", key="k", body="other"))
    assert conflict.value.job_id == "j1"
    _, created = store.create(_new("j4", key="k", owner="b"))  # another owner's key space
    assert created
    assert store.lookup("a", "k").id == "j1"  # type: ignore[union-attr]
    assert store.lookup("a", "nope") is None and store.get("j2") is None
    assert store.active("a") == 1 and store.active("b") == 1 and store.queued() == 2


def test_recover_after_a_restart_requeues_then_gives_up(open_store: Opener) -> None:
    store = open_store()
    store.create(_new("j1"))
    store.claim("w", lease=60)
    store.close()
    for attempt in (1, 2):
        store = open_store()  # "restarted": the job was left running, its lease still on
        assert store.recover(max_attempts=2) == []
        (job,) = store.recover(max_attempts=2, expired_only=False)
        if attempt == 1:
            assert job.status == "queued" and job.attempts == 1
            assert store.claim("w", lease=60).attempts == 2  # type: ignore[union-attr]
    assert job.status == "failed" and job.error is not None
    assert job.error.type == "WorkerLostError"
    assert job.error.message.startswith("the server stopped while the job ran; gave up after 2")
    kinds = [event.type for event in store.events("j1")]
    assert kinds == ["queued", "started", "queued", "started", "failed"]
    assert store.events("j1")[2].data["attempts"] == 1


def test_webhook_states(store: JobStore) -> None:
    store.create(_new("j1", webhook="http://127.0.0.1/x"))
    store.create(_new("j2", webhook="http://127.0.0.1/y"))
    store.create(_new("j3"))
    store.claim("w", lease=60)
    assert store.pending_webhooks() == []  # not final yet
    store.finish("j1", status="failed", error=JobError(type="BackendError", message="m"))
    store.cancel("j2")
    store.cancel("j3")  # no webhook
    assert [job.id for job in store.pending_webhooks()] == ["j1", "j2"]
    store.webhook_done("j1", ok=True)
    store.webhook_done("j2", ok=False)
    assert store.pending_webhooks() == []
    assert store.get("j1").webhook_state == "sent"  # type: ignore[union-attr]
    assert store.get("j2").webhook_state == "failed"  # type: ignore[union-attr]
    assert store.get("j3").webhook_state == "none"  # type: ignore[union-attr]


def test_leases_heartbeats_and_the_worker_that_holds_them(store: JobStore) -> None:
    store.create(_new("j1"))
    before = time.time()
    job = store.claim("w1", lease=30)
    assert job is not None and job.worker == "w1" and job.lease_until is not None
    assert before + 29 <= job.lease_until <= time.time() + 31
    assert store.get("j1").lease_until == job.lease_until  # type: ignore[union-attr]
    assert store.heartbeat("j1", "w1", lease=120)
    renewed = store.get("j1").lease_until  # type: ignore[union-attr]
    assert renewed is not None and renewed >= job.lease_until + 80
    assert not store.heartbeat("j1", "w2", lease=120)  # not its job
    assert store.get("j1").lease_until == renewed  # type: ignore[union-attr]
    assert not store.heartbeat("missing", "w1", lease=120)
    # with a worker, only that worker's running job is finished or re-queued
    assert store.finish("j1", status="succeeded", worker="w2") is None
    assert store.requeue("j1", reason="r", max_attempts=5, worker="w2") is None
    back = store.requeue("j1", reason="the server was stopping", max_attempts=5, worker="w1")
    assert back is not None and back.status == "queued" and back.attempts == 1
    assert not store.heartbeat("j1", "w1", lease=120)  # re-queued: the worker stops
    assert store.requeue("j1", reason="r", max_attempts=5) is None  # not running
    assert store.events("j1")[-1].data == {"requeued": "the server was stopping", "attempts": 1}
    assert store.claim("w2", lease=30).worker == "w2"  # type: ignore[union-attr]
    assert store.finish("j1", status="succeeded", worker="w1") is None
    assert store.finish("j1", status="succeeded", worker="w2") is not None
    assert not store.heartbeat("j1", "w2", lease=120)  # finished


def test_recover_requeues_only_expired_leases(store: JobStore) -> None:
    store.create(_new("lost"))
    store.create(_new("alive"))
    store.claim("w1", lease=0.05)
    store.claim("w2", lease=60)
    time.sleep(0.2)
    assert not store.heartbeat("lost", "w2", lease=60)
    (job,) = store.recover(max_attempts=3)
    assert job.id == "lost" and job.status == "queued" and job.attempts == 1
    event = store.events("lost")[-1]
    assert event.type == "queued" and event.data["attempts"] == 1
    assert isinstance(event.data["requeued"], str) and event.data["requeued"]
    assert store.get("alive").status == "running"  # type: ignore[union-attr]
    assert store.recover(max_attempts=3) == []
    assert not store.heartbeat("lost", "w1", lease=60)  # its old worker lost it
    # lost again on its last attempt: failed
    again = store.claim("w3", lease=0.05)
    assert again is not None and again.id == "lost" and again.attempts == 2
    time.sleep(0.2)
    (failed,) = store.recover(max_attempts=2)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.type == "WorkerLostError" and "gave up after 2 attempt(s)" in (
        failed.error.message
    )
    assert store.events("lost")[-1].type == "failed"
    assert store.counts() == {
        "queued": 0,
        "running": 1,
        "succeeded": 0,
        "failed": 1,
        "cancelled": 0,
    }
    (both,) = store.recover(max_attempts=3, expired_only=False)  # every running one
    assert both.id == "alive" and both.status == "queued"


def test_queued_and_active_counts(store: JobStore) -> None:
    assert store.queued() == 0 and store.active("a") == 0
    for i in range(3):
        store.create(_new(f"a{i}"))
    store.create(_new("b0", owner="b"))
    assert store.queued() == 4 and store.active("a") == 3 and store.active("b") == 1
    store.claim("w", lease=60)  # a0
    assert store.queued() == 3 and store.active("a") == 3
    store.finish("a0", status="succeeded")
    store.cancel("a1")
    assert store.queued() == 2 and store.active("a") == 1 and store.active("b") == 1
    store.claim("w", lease=60)  # a2
    store.requeue("a2", reason="r", max_attempts=1)  # its last attempt: failed
    assert store.active("a") == 0 and store.queued() == 1 and store.active("nobody") == 0
    assert store.counts() == {
        "queued": 1,
        "running": 0,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 1,
    }


@pytest.mark.slow
def test_two_stores_racing_claims_never_share_a_job(open_store: Opener) -> None:
    stores = [open_store(), open_store()]
    for i in range(50):
        stores[i % 2].create(_new(f"j{i:02d}"))
    claimed: list[tuple[str, str]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(store: JobStore, worker: str) -> None:
        try:
            while (job := store.claim(worker, lease=60)) is not None:
                with lock:
                    claimed.append((job.id, worker))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(store, f"s{s}-w{w}"))
        for s, store in enumerate(stores)
        for w in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    ids = Counter(job_id for job_id, _ in claimed)
    assert sorted(ids) == [f"j{i:02d}" for i in range(50)] and set(ids.values()) == {1}
    for job_id, worker in claimed:
        job = stores[0].get(job_id)
        assert job is not None and job.worker == worker and job.attempts == 1
        assert [event.type for event in stores[1].events(job_id)] == ["queued", "started"]
    assert stores[1].queued() == 0 and stores[0].counts()["running"] == 50
    assert stores[0].active("a") == 50


# -- Redis only ----------------------------------------------------------------------------


def test_redis_crash_keeps_every_acknowledged_job(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    from deskgen.serve._redis import RedisJobStore

    try:
        store = RedisJobStore(server.url)
        for i in range(20):
            store.create(_new(f"j{i:02d}", key=f"k{i}", webhook="http://127.0.0.1/x"))
        for _ in range(5):
            store.claim("w", lease=60)
        store.step("j00", 1, 4)
        store.finish("j00", status="succeeded", event={"images": 1})
        store.cancel("j01")
        store.cancel("j10")
        jobs = {f"j{i:02d}": store.get(f"j{i:02d}") for i in range(20)}
        events = {job_id: store.events(job_id) for job_id in jobs}
        counts = store.counts()
        store.close()
        server.restart_after_crash()  # SIGKILL: no shutdown, no last save
        store = RedisJobStore(server.url)
        assert {job_id: store.get(job_id) for job_id in jobs} == jobs
        assert {job_id: store.events(job_id) for job_id in jobs} == events
        assert store.counts() == counts and store.queued() == 14
        assert store.lookup("a", "k7") == jobs["j07"]
        assert [job.id for job in store.pending_webhooks()] == ["j00", "j10"]
        assert store.get("j01").cancel_requested  # type: ignore[union-attr]
        assert store.claim("w", lease=60).id == "j05"  # type: ignore[union-attr]
        store.close()
    finally:
        server.close()


def test_redis_errors_name_the_url_without_its_password(redis_server: RedisServer) -> None:
    from deskgen.serve._redis import RedisJobStore

    with pytest.raises(ServiceTimeoutError) as refused:
        RedisJobStore("redis://deskgen:hunter2secret@127.0.0.1:1/0")
    message = str(refused.value)
    assert "hunter2secret" not in message and "redis://deskgen:***@127.0.0.1:1/0" in message
    assert "cannot be reached" in message
    with pytest.raises(ServiceTimeoutError, match="nonexistent"):
        RedisJobStore("unix:///nonexistent/redis.sock")
    with pytest.raises(ConfigError, match="not valid"):
        RedisJobStore("http://hunter2secret@localhost")
    # a server that wants a password, given a wrong one
    import redis

    admin = redis.Redis(unix_socket_path=str(redis_server.socket))
    admin.config_set("requirepass", "right-password")
    try:
        with pytest.raises(AuthenticationError) as wrong:
            RedisJobStore(f"unix://:wrong-password@{redis_server.socket}")
        assert "wrong-password" not in str(wrong.value) and ":***@" in str(wrong.value)
        store = RedisJobStore(f"unix://:right-password@{redis_server.socket}")
    finally:
        admin.auth("right-password")
        admin.config_set("requirepass", "")
        admin.close()
    store.close()


def test_redis_warns_when_it_may_lose_jobs(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    from deskgen.serve._redis import RedisJobStore

    admin = redis.Redis(unix_socket_path=str(redis_server.socket))
    with caplog.at_level(logging.WARNING, logger="deskgen.serve"):
        RedisJobStore(redis_server.url).close()
        assert not caplog.records  # appendonly yes, appendfsync always
        admin.config_set("appendonly", "no")
        try:
            RedisJobStore(redis_server.url).close()
        finally:
            admin.config_set("appendonly", "yes")
            admin.close()
    (record,) = caplog.records
    assert "appendonly yes" in record.getMessage() and "appendfsync always" in (record.getMessage())


def test_a_redis_that_goes_away_raises_deskgen_errors(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    from deskgen.serve._redis import RedisJobStore

    store = RedisJobStore(server.url)
    store.create(_new("j1"))
    server.close()
    with pytest.raises(ServiceTimeoutError, match="cannot be reached"):
        store.get("j1")
    with pytest.raises(ServiceTimeoutError):
        store.claim("w", lease=60)
    store.close()


def test_a_step_of_a_job_not_running_records_nothing(store: JobStore) -> None:
    store.create(_new("waiting"))
    store.step("waiting", 1, 4)  # a stale worker's step after its job was re-queued
    job = store.get("waiting")
    assert job is not None and (job.step, job.total_steps) == (0, 0)
    assert [event.type for event in store.events("waiting")] == ["queued"]


def test_secrets_are_made_once_and_shared_by_every_client(open_store: Opener) -> None:
    first, second = open_store(), open_store()
    links = first.secret("links")
    assert len(links) == 32 and second.secret("links") == links  # another server: the same
    assert first.secret("webhooks") != links  # one secret per use
