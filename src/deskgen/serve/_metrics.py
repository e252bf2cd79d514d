"""Prometheus metrics of one service (its own registry: several apps in a process don't mix).

``deskgen_queue_depth``, ``deskgen_jobs{state}`` (read from the job store at each scrape),
``deskgen_jobs_finished_total{status}``, ``deskgen_step_seconds``, ``deskgen_job_seconds``,
``deskgen_request_seconds{route,method,status}``, ``deskgen_gpu_memory_bytes{device}``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def _gpu_memory() -> dict[str, int]:
    """Allocated CUDA memory by device, only where torch is already imported (a scrape never
    imports it)."""
    torch: Any = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return {}
    return {
        f"cuda:{i}": int(torch.cuda.memory_allocated(i)) for i in range(torch.cuda.device_count())
    }


class _StoreCollector(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self._counts()
        depth = GaugeMetricFamily("deskgen_queue_depth", "Jobs waiting for a worker.")
        depth.add_metric([], counts.get("queued", 0))
        yield depth
        jobs = GaugeMetricFamily("deskgen_jobs", "Jobs in the store by state.", labels=["state"])
        for state, count in sorted(counts.items()):
            jobs.add_metric([state], count)
        yield jobs
        memory = GaugeMetricFamily(
            "deskgen_gpu_memory_bytes", "CUDA memory allocated by torch.", labels=["device"]
        )
        for device, used in _gpu_memory().items():
            memory.add_metric([device], used)
        yield memory


class Metrics:
    """The service's counters and histograms; `render` is the ``/metrics`` answer."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StoreCollector(counts))
        self.finished = Counter(
            "deskgen_jobs_finished_total",
            "Jobs that reached a final state.",
            ["status"],
            registry=self.registry,
        )
        self.step_seconds = Histogram(
            "deskgen_step_seconds",
            "Seconds per denoising step.",
            buckets=_STEP_BUCKETS,
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            "deskgen_job_seconds",
            "Seconds from a job's start to its end.",
            buckets=_JOB_BUCKETS,
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "deskgen_request_seconds",
            "Seconds per HTTP request.",
            ["route", "method", "status"],
            buckets=_JOB_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
