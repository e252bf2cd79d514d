"""`RedisJobStore`: jobs and events in Redis, shared by every server that uses the same URL.

Keys (``P`` is the prefix, ``deskgen`` by default)::

    P:job:ID        hash: data (the Job's JSON), ver, status, seq, owner, step, total
    P:events:ID     list: the job's events in order (event n is element n - 1)
    P:queue         sorted set: queued job ids, scored by their creation number (P:seq)
    P:running       sorted set: running job ids, scored by their lease's end
    P:seq           counter: the creation number of the last job
    P:counts        hash: jobs by status
    P:active        hash: queued and running jobs by owner
    P:idem:OWNER    hash: idempotency key -> job id
    P:webhooks      set: final jobs whose webhook is pending

Every transition is one Lua script, so it is atomic across servers: a job is read, its next
state computed in Python (`._lifecycle`, the rules every store shares), and committed by a
script that checks the job's ``ver`` is still the one read (compare-and-set) and moves it
between the queue, the running set and the counters in the same step. A commit that lost a
race changes nothing and the transition is computed again from the job as it is now; so two
workers can never both claim a job. Lease times come from the Redis server's clock, the one
clock every server shares.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Concatenate, Literal, NamedTuple, ParamSpec, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from .._exceptions import (
    AuthenticationError,
    ConfigError,
    DeskgenError,
    MissingDependencyError,
    ServiceTimeoutError,
)
from ._jobs import IdempotencyConflict, Job, JobError, JobEvent, JobImage, JobStore, NewJob
from ._lifecycle import (
    LEASE_LOST,
    SERVER_RESTARTED,
    Event,
    cancelled,
    claimed,
    expired,
    finished,
    redact,
    requeued,
)

try:
    import redis
except ImportError as exc:  # pragma: no cover - installed in tests
    raise MissingDependencyError("RedisJobStore", extra="redis", missing=["redis"]) from exc

__all__ = ["RedisJobStore"]

log = logging.getLogger("deskgen.serve")

_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
_CLAIM_ROUNDS = 50
"""Claim gives up (None: the worker looks again soon) after losing this many races in a row."""

# KEYS: job, events, queue, seq, counts, active, idem; ARGV: id, owner, key or "", data, event
_CREATE = """
if ARGV[3] ~= '' then
  local first = redis.call('HGET', KEYS[7], ARGV[3])
  if first then return {0, first} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {1, ARGV[1]} end
local seq = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[1], 'data', ARGV[4], 'ver', 1, 'status', 'queued', 'seq', seq,
  'owner', ARGV[2], 'step', 0, 'total', 0)
redis.call('ZADD', KEYS[3], seq, ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[5])
redis.call('HINCRBY', KEYS[5], 'queued', 1)
redis.call('HINCRBY', KEYS[6], ARGV[2], 1)
if ARGV[3] ~= '' then redis.call('HSET', KEYS[7], ARGV[3], ARGV[1]) end
return {1, ARGV[1]}
"""

# KEYS: job, events, queue, running, counts, active, webhooks
# ARGV: ver read, id, new status, data, step or "" (kept), total, event or "", lease end or "",
#       "1" when the webhook is pending
_COMMIT = """
local cur = redis.call('HMGET', KEYS[1], 'ver', 'status', 'seq', 'owner')
if cur[1] ~= ARGV[1] then return 0 end
local id, old, new = ARGV[2], cur[2], ARGV[3]
redis.call('HSET', KEYS[1], 'data', ARGV[4], 'status', new)
redis.call('HINCRBY', KEYS[1], 'ver', 1)
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'step', ARGV[5], 'total', ARGV[6]) end
if old ~= new then
  redis.call('HINCRBY', KEYS[5], old, -1)
  redis.call('HINCRBY', KEYS[5], new, 1)
  if old == 'queued' then redis.call('ZREM', KEYS[3], id) end
  if old == 'running' then redis.call('ZREM', KEYS[4], id) end
  if new == 'queued' then redis.call('ZADD', KEYS[3], cur[3], id) end
  if new ~= 'queued' and new ~= 'running' then
    if redis.call('HINCRBY', KEYS[6], cur[4], -1) <= 0 then redis.call('HDEL', KEYS[6], cur[4]) end
  end
end
if new == 'running' and ARGV[8] ~= '' then redis.call('ZADD', KEYS[4], ARGV[8], id) end
if ARGV[9] == '1' then redis.call('SADD', KEYS[7], id) else redis.call('SREM', KEYS[7], id) end
if ARGV[7] ~= '' then redis.call('RPUSH', KEYS[2], ARGV[7]) end
return 1
"""

# KEYS: job, events; ARGV: step, total, event
_STEP = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'step', ARGV[1], 'total', ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[3])
return 1
"""

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _secrets(url: str) -> list[str]:
    """The password in ``url`` (a lone user name too: it may be one), and its query's."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = [value for key, value in parse_qsl(parts.query) if key == "password"]
    if parts.password:
        found.append(parts.password)
    elif parts.username and "@" in parts.netloc:
        found.append(parts.username)
    return [text for secret in found if secret for text in {secret, unquote(secret)}]


def _guarded(
    method: Callable[Concatenate[RedisJobStore, _P], _R],
) -> Callable[Concatenate[RedisJobStore, _P], _R]:
    """``method`` with redis-py's connection errors raised as deskgen's (`_unavailable`)."""

    @functools.wraps(method)
    def wrapper(self: RedisJobStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unavailable(exc) from exc

    return wrapper


def _text(value: object) -> str:
    """A reply as text (the client decodes replies: this only tells mypy)."""
    return value.decode() if isinstance(value, bytes) else str(value)


class _Stored(NamedTuple):
    job: Job
    ver: str
    seq: int


class _Change(NamedTuple):
    job: Job
    event: Event | None


class RedisJobStore(JobStore):
    """Jobs in the Redis at ``url`` (``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``,
    ``rediss://`` with TLS, ``unix:///PATH/redis.sock``), under keys starting ``prefix:``.

    ```python
    store = RedisJobStore("redis://redis.internal:6379/0")
    ```

    Nothing acknowledged is lost when Redis crashes only if it runs with ``appendonly yes``
    and ``appendfsync always`` (``everysec``: up to a second lost); a warning says so at
    start when it does not. Connection failures raise `ServiceTimeoutError` (refused
    credentials: `AuthenticationError`), with the URL without its password.
    """

    shared = True

    def __init__(self, url: str, *, prefix: str = "deskgen") -> None:
        self.url = redact(url)
        self._secrets = _secrets(url)
        try:
            self._redis: redis.Redis = redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_connect_timeout=10,
                socket_timeout=30,
                health_check_interval=30,
            )
        except ValueError as exc:
            raise ConfigError(
                f"The Redis URL {self.url!r} is not valid ({self._scrub(str(exc))}). Use "
                "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss://... for TLS, or "
                "unix:///PATH/redis.sock."
            ) from None
        p = prefix
        self._queue, self._running = f"{p}:queue", f"{p}:running"
        self._seq, self._counts, self._active = f"{p}:seq", f"{p}:counts", f"{p}:active"
        self._webhooks = f"{p}:webhooks"
        self._prefix = p
        self._create = self._redis.register_script(_CREATE)
        self._commit_script = self._redis.register_script(_COMMIT)
        self._step = self._redis.register_script(_STEP)
        self._check()

    # -- helpers -------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """``text`` without the URL's password (redis-py's messages have none: to be sure;
        a password under 4 characters is left, or no word of the message would be)."""
        for secret in (secret for secret in self._secrets if len(secret) >= 4):
            text = text.replace(secret, "***")
        return text

    def _unavailable(self, exc: Exception) -> DeskgenError:
        """The deskgen error for a redis-py connection error."""
        why = self._scrub(str(exc)) or type(exc).__name__
        if isinstance(exc, (redis.AuthenticationError, redis.exceptions.AuthorizationError)):
            return AuthenticationError(
                f"Redis at {self.url} refused the credentials ({why}). Put the right "
                "password (and user) in the URL: redis://USER:PASSWORD@HOST:6379/0."
            )
        return ServiceTimeoutError(
            f"Redis at {self.url} cannot be reached ({why}). Check that redis-server runs "
            "there and that the URL's host, port (or socket path) and database are right."
        )

    @_guarded
    def _check(self) -> None:
        """Connect once (a wrong URL fails now), and warn when Redis may lose jobs."""
        self._redis.ping()
        try:
            config = self._redis.config_get("append*")
            policy = self._redis.config_get("maxmemory-policy").get("maxmemory-policy")
        except redis.ResponseError:  # CONFIG refused (managed Redis): it cannot be told
            return
        if config.get("appendonly") != "yes" or config.get("appendfsync") == "no":
            log.warning(
                "Redis at %s does not write every change to disk (appendonly %s, appendfsync "
                "%s): a Redis crash can lose jobs that were acknowledged. Set appendonly yes "
                "and appendfsync always (nothing lost) or everysec (up to a second lost) in "
                "redis.conf, or with CONFIG SET.",
                self.url,
                config.get("appendonly"),
                config.get("appendfsync"),
            )
        if policy not in (None, "noeviction"):
            log.warning(
                "Redis at %s evicts keys when its memory is full (maxmemory-policy %s): jobs "
                "can disappear. Set maxmemory-policy noeviction.",
                self.url,
                policy,
            )

    def _key(self, kind: str, job_id: str) -> str:
        return f"{self._prefix}:{kind}:{job_id}"

    def _now(self) -> float:
        """The Redis server's clock (the one every server sharing the store agrees on)."""
        seconds, micros = self._redis.time()
        return seconds + micros / 1e6

    @staticmethod
    def _event(event: Event) -> str:
        kind, data = event
        return json.dumps({"type": kind, "data": data, "time": time.time()})

    def _read(self, job_id: str) -> _Stored | None:
        data, ver, seq, step, total = self._redis.hmget(
            self._key("job", job_id), ["data", "ver", "seq", "step", "total"]
        )
        if data is None or ver is None:
            return None
        job = Job.model_validate_json(data)
        job = job.model_copy(update={"step": int(step or 0), "total_steps": int(total or 0)})
        return _Stored(job, _text(ver), int(seq or 0))

    def _commit(self, stored: _Stored, change: _Change) -> bool:
        """Write ``change`` if the job is still as ``stored`` read it; False when it changed."""
        job, old = change.job, stored.job
        steps = job.status != old.status and job.status in ("queued", "running")
        lease = job.lease_until if job.status == "running" and job.lease_until else None
        pending = job.final and job.webhook_state == "pending"
        done = self._commit_script(
            keys=[
                self._key("job", job.id),
                self._key("events", job.id),
                self._queue,
                self._running,
                self._counts,
                self._active,
                self._webhooks,
            ],
            args=[
                stored.ver,
                job.id,
                job.status,
                job.model_dump_json(),
                job.step if steps else "",
                job.total_steps if steps else "",
                self._event(change.event) if change.event else "",
                repr(lease) if lease is not None else "",
                "1" if pending else "0",
            ],
        )
        return bool(done)

    def _apply(
        self, job_id: str, decide: Callable[[Job], _Change | None]
    ) -> tuple[Job | None, Job | None]:
        """``(job as read, job as changed)`` after committing ``decide``'s change, computed
        again from the job as it is now until no other server changed it in between."""
        while True:
            stored = self._read(job_id)
            if stored is None:
                return None, None
            change = decide(stored.job)
            if change is None:
                return stored.job, None
            if self._commit(stored, change):
                return stored.job, change.job

    # -- JobStore ------------------------------------------------------------------------

    @_guarded
    def create(self, job: NewJob) -> tuple[Job, bool]:
        stored = Job(**job.model_dump())
        key = stored.idempotency_key
        created, job_id = self._create(
            keys=[
                self._key("job", stored.id),
                self._key("events", stored.id),
                self._queue,
                self._seq,
                self._counts,
                self._active,
                self._key("idem", stored.owner),
            ],
            args=[
                stored.id,
                stored.owner,
                "" if key is None else key,
                stored.model_dump_json(),
                self._event(("queued", {})),
            ],
        )
        if created:
            return (self.get(stored.id) or stored), True
        first = self.get(_text(job_id))
        if first is None:  # pragma: no cover - the key names a job that is gone
            raise RuntimeError(f"idempotency key {key!r} names the missing job {job_id!r}")
        if first.body_sha256 != job.body_sha256:
            raise IdempotencyConflict(first.id)
        return first, False

    @_guarded
    def get(self, job_id: str) -> Job | None:
        stored = self._read(job_id)
        return None if stored is None else stored.job

    @_guarded
    def lookup(self, owner: str, idempotency_key: str) -> Job | None:
        job_id = self._redis.hget(self._key("idem", owner), idempotency_key)
        return None if job_id is None else self.get(_text(job_id))

    @_guarded
    def claim(self, worker: str, *, lease: float) -> Job | None:
        for _ in range(_CLAIM_ROUNDS):
            ids = self._redis.zrange(self._queue, 0, 15)
            if not ids:
                return None
            now = self._now()
            for job_id in map(_text, ids):
                stored = self._read(job_id)
                if stored is None:  # its keys are gone (flushed): not a job any more
                    self._redis.zrem(self._queue, job_id)
                    continue
                if stored.job.status != "queued":  # claimed since the ZRANGE
                    continue
                job, event = claimed(stored.job, worker, now=now, lease=lease)
                if self._commit(stored, _Change(job, event)):
                    return job
        return None

    @_guarded
    def heartbeat(self, job_id: str, worker: str, *, lease: float) -> bool:
        now = self._now()

        def decide(job: Job) -> _Change | None:
            if job.status != "running" or job.worker != worker:
                return None
            return _Change(job.model_copy(update={"lease_until": now + lease}), None)

        return self._apply(job_id, decide)[1] is not None

    @_guarded
    def step(self, job_id: str, step: int, total: int) -> None:
        event = self._event(("step", {"step": step, "total_steps": total}))
        self._step(
            keys=[self._key("job", job_id), self._key("events", job_id)],
            args=[step, total, event],
        )

    @_guarded
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
        def decide(job: Job) -> _Change | None:
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
            return None if done is None else _Change(*done)

        return self._apply(job_id, decide)[1]

    @_guarded
    def cancel(self, job_id: str) -> Job | None:
        def decide(job: Job) -> _Change | None:
            done = cancelled(job, now=time.time())
            return None if done is None else _Change(*done)

        old, new = self._apply(job_id, decide)
        return new or old

    def _requeue(
        self,
        job_id: str,
        reason: str,
        max_attempts: int,
        now: float,
        *,
        expired_only: bool,
        worker: str | None = None,
    ) -> Job | None:
        def decide(job: Job) -> _Change | None:
            if job.status != "running" or (expired_only and not expired(job, now)):
                return None
            if worker is not None and job.worker != worker:
                return None
            return _Change(*requeued(job, reason=reason, max_attempts=max_attempts, now=now))

        return self._apply(job_id, decide)[1]

    @_guarded
    def requeue(
        self, job_id: str, *, reason: str, max_attempts: int, worker: str | None = None
    ) -> Job | None:
        return self._requeue(
            job_id, reason, max_attempts, time.time(), expired_only=False, worker=worker
        )

    @_guarded
    def recover(self, *, max_attempts: int, expired_only: bool = True) -> list[Job]:
        now = self._now()
        if expired_only:
            # ZRANGEBYSCORE, not ZRANGE ... BYSCORE: that needs Redis 6.2
            ids = self._redis.zrangebyscore(self._running, "-inf", f"({now!r}")
        else:
            ids = self._redis.zrange(self._running, 0, -1)
        found = [stored for stored in map(self._read, map(_text, ids)) if stored]
        reason = LEASE_LOST if expired_only else SERVER_RESTARTED
        jobs = []
        for stored in sorted(found, key=lambda stored: stored.seq):
            job = self._requeue(stored.job.id, reason, max_attempts, now, expired_only=expired_only)
            if job is not None:
                jobs.append(job)
        return jobs

    @_guarded
    def events(self, job_id: str, *, after: int = 0) -> list[JobEvent]:
        after = max(after, 0)
        rows = self._redis.lrange(self._key("events", job_id), after, -1)
        events = []
        for seq, row in enumerate(rows, start=after + 1):
            event = json.loads(row)
            events.append(
                JobEvent(seq=seq, type=event["type"], data=event["data"], time=event["time"])
            )
        return events

    @_guarded
    def position(self, job_id: str) -> int | None:
        rank = self._redis.zrank(self._queue, job_id)
        return None if rank is None else int(_text(rank)) + 1

    @_guarded
    def secret(self, name: str) -> bytes:
        key = f"{self._prefix}:secret:{name}"
        self._redis.set(key, secrets.token_hex(32), nx=True)  # the first server's wins
        return bytes.fromhex(_text(self._redis.get(key)))

    @_guarded
    def queued(self) -> int:
        return int(self._redis.zcard(self._queue))

    @_guarded
    def counts(self) -> dict[str, int]:
        found = self._redis.hmget(self._counts, list(_STATUSES))
        return {status: int(n or 0) for status, n in zip(_STATUSES, found, strict=True)}

    @_guarded
    def active(self, owner: str) -> int:
        return int(self._redis.hget(self._active, owner) or 0)

    @_guarded
    def webhook_done(self, job_id: str, *, ok: bool) -> None:
        state = "sent" if ok else "failed"
        self._apply(
            job_id, lambda job: _Change(job.model_copy(update={"webhook_state": state}), None)
        )

    @_guarded
    def pending_webhooks(self) -> list[Job]:
        found = map(self._read, map(_text, self._redis.smembers(self._webhooks)))
        pending = [
            stored
            for stored in found
            if stored is not None and stored.job.final and stored.job.webhook_state == "pending"
        ]
        return [stored.job for stored in sorted(pending, key=lambda stored: stored.seq)]

    def close(self) -> None:
        self._redis.close()
        self._redis.connection_pool.disconnect()
