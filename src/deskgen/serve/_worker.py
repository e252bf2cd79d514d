"""`Worker`: one thread per device that owns one `DeskGenerator` and runs queued jobs.

Weights load once, when the worker starts, and serve every job after; the worker takes the
oldest queued job from the store, runs it with progress and cancel hooks, stores its images,
then commits the final state (images first: a succeeded job always has its files).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from .._exceptions import DeskgenError, GenerationCancelledError
from .._models import GenerationRequest, StepProgress
from .._record import png_bytes
from ._errors import job_error
from ._jobs import Job, JobImage

if TYPE_CHECKING:
    from .._generator import DeskGenerator
    from ._service import Service

__all__ = ["Worker"]

log = logging.getLogger("deskgen.serve")

_CANCEL_POLL = 0.5
"""Seconds between looks at the store for a cancel made by another process."""


class _CancelFlag:
    """Set by a cancel in this process at once, or by one in another process (the store's
    ``cancel_requested``, looked at every half second)."""

    def __init__(
        self, service: Service, job_id: str, local: threading.Event, lost: threading.Event
    ) -> None:
        self._service = service
        self._job_id = job_id
        self._local = local
        self._lost = lost  # this run's own: a lost lease stops only this run
        self._checked = time.monotonic()

    def is_set(self) -> bool:
        if self._local.is_set() or self._lost.is_set():
            return True
        now = time.monotonic()
        if now - self._checked >= _CANCEL_POLL:
            self._checked = now
            job = self._service.store.get(self._job_id)
            if job is not None and job.cancel_requested:
                self._local.set()
        return self._local.is_set()


class _Lease:
    """Renews the lease of the running job every third of its length, from its own thread
    (a denoise step can outlast a lease); a renewal refused (the job was re-queued after the
    lease ran out, e.g. this machine stalled) stops the job at its next step, unfinished."""

    def __init__(self, service: Service, job_id: str, worker: str) -> None:
        self.lost = threading.Event()
        """Set when a renewal was refused: this run stops (only this run, not the job's next)."""
        self._service = service
        self._job_id = job_id
        self._worker = worker
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _main(self) -> None:
        lease = self._service.settings.lease
        while not self._done.wait(lease / 3):
            try:
                alive = self._service.store.heartbeat(self._job_id, self._worker, lease=lease)
            except Exception:  # the store is unreachable: try again, the lease may still hold
                log.warning("lease not renewed", extra={"job": self._job_id}, exc_info=True)
                continue
            if not alive:
                log.warning("job lease lost: stopping it", extra={"job": self._job_id})
                self.lost.set()
                return


class Worker:
    """Runs jobs on one device until stopped."""

    def __init__(self, service: Service, *, name: str, device: str) -> None:
        self.service = service
        self.name = name
        """Unique among every server sharing the store (the lease holder's name)."""
        self.device = device
        self.generator: DeskGenerator | None = None
        self.load_error: BaseException | None = None
        self.loaded = threading.Event()
        self.current: str | None = None
        self._stop = threading.Event()
        self._requeue = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"deskgen-{name}", daemon=True)

    @property
    def ready(self) -> bool:
        return self.loaded.is_set() and self.generator is not None

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, requeue: bool) -> None:
        """Stop after the current job; ``requeue``: stop it at its next step and queue it again."""
        if requeue:
            self._requeue.set()
            if self.current is not None:
                self.service.cancel_local(self.current)
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _load(self) -> DeskGenerator:
        from .._generator import DeskGenerator

        settings = self.service.settings
        return DeskGenerator(
            settings.backend,
            model=settings.model,
            device=self.device,
            dtype=settings.dtype,
            **settings.options,
        )

    def _main(self) -> None:
        try:
            started = time.perf_counter()
            self.generator = self._load()
            log.info(
                "weights loaded",
                extra={
                    "worker": self.name,
                    "device": self.generator.device,
                    "seconds": round(time.perf_counter() - started, 3),
                },
            )
        except BaseException as exc:  # reported by /readyz and the CLI, which exits
            self.load_error = exc
            log.error("weights did not load", extra={"worker": self.name, "error": str(exc)})
            self.loaded.set()
            self.service.worker_failed(self, exc)
            return
        self.loaded.set()
        try:
            while not self._stop.is_set():
                if self.service.draining:  # between SIGTERM and the drain: take nothing new
                    self._stop.wait(0.1)
                    continue
                try:
                    job = self.service.store.claim(self.name, lease=self.service.settings.lease)
                except Exception:  # the store is unreachable for now: keep the worker alive
                    log.warning("could not claim a job", extra={"worker": self.name}, exc_info=True)
                    self._stop.wait(1.0)
                    continue
                if job is None:
                    self.service.wait_for_work(0.5)
                    continue
                self._run(job)
        finally:
            self.generator.close()

    def _inputs(self, job: Job) -> dict[str, Any]:
        results = self.service.results
        images: dict[str, Any] = {}
        for name, keys in job.inputs.items():
            data = [results.get(key) for key in keys]
            # references are a list; so are several control images (one per control)
            images[name] = data if name == "references" or len(data) > 1 else data[0]
        return images

    def _run(self, job: Job) -> None:
        service = self.service
        self.current = job.id
        with _Lease(service, job.id, self.name) as lease:
            flag = _CancelFlag(service, job.id, service.cancel_event(job.id), lease.lost)
            final = self._generate(job, flag, lease)
        self.current = None
        service.forget_cancel(job.id)
        if final is not None:
            service.job_finished(final)

    def _generate(self, job: Job, flag: _CancelFlag, lease: _Lease) -> Job | None:
        """Run the job and commit its final state (None: not ours to finish any more)."""
        assert self.generator is not None
        service = self.service
        store = service.store
        started = time.perf_counter()
        last = [started]
        log.info("job started", extra=service.job_log(job, attempt=job.attempts))

        def on_step(progress: StepProgress) -> None:
            now = time.perf_counter()
            service.metrics.step_seconds.observe(now - last[0])
            last[0] = now
            try:
                store.step(job.id, progress.step, progress.total_steps)
            except Exception:  # progress need not be stored: the job goes on
                log.warning("progress not stored", extra={"job": job.id}, exc_info=True)
            service.notify(job.id)

        final: Job | None
        try:
            request = GenerationRequest.model_validate(job.fields | self._inputs(job))
            result = self.generator.generate(request, on_step=on_step, cancel=flag)
            images = []
            for i, (image, seed) in enumerate(zip(result.images, result.seeds, strict=True)):
                # per attempt: a worker that lost its lease never overwrites the next one's
                key = f"results/{job.id}/{job.attempts}/{i}.png"
                service.results.put(key, png_bytes(result, i))
                images.append(
                    JobImage(index=i, key=key, seed=seed, width=image.width, height=image.height)
                )
            final = store.finish(
                job.id,
                worker=self.name,
                status="succeeded",
                images=images,
                timings=result.timings.model_dump(),
                event={"images": len(images)},
            )
        except GenerationCancelledError as exc:
            if lease.lost.is_set():  # re-queued elsewhere: whoever claims it next finishes it
                final = None
            elif self._requeue.is_set():
                final = store.requeue(
                    job.id,
                    worker=self.name,
                    reason="the server was stopping",
                    max_attempts=service.settings.max_attempts + 1,
                )
            else:
                final = store.finish(
                    job.id, worker=self.name, status="cancelled", event={"step": exc.step}
                )
        except Exception as exc:
            error = job_error(exc)
            if not isinstance(exc, DeskgenError):
                log.exception("job failed unexpectedly", extra=service.job_log(job))
            final = store.finish(
                job.id,
                worker=self.name,
                status="failed",
                error=error,
                event={"error": error.model_dump()},
            )
        service.metrics.job_seconds.observe(time.perf_counter() - started)
        return final
