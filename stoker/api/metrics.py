"""Prometheus metrics of one API process, in a registry of its own (one per app, so
tests can build many apps in one process).

- ``stoker_jobs{kind,state}``: jobs in the store, read from the store's counters when
  scraped (every process and worker of the deployment, not only this API's).
- ``stoker_queue_depth{kind}``: chunk messages waiting, measured when scraped.
- ``stoker_job_duration_seconds{kind,state}`` (submission → end) and
  ``stoker_job_run_seconds{kind,state}`` (first start → end): each job the API process
  sees end (a synchronous request, a read of the job, its events, its webhook, a batch's
  finalization), observed once per process. Several API replicas each observe what
  they see: sum them per job only through one replica, or read them per instance.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from stoker.queues.records import JobRecord

#: Ended jobs remembered so each is observed once (oldest forgotten first).
SEEN_JOBS = 100_000
#: Job durations span a 50 ms echo to an overnight audiobook.
DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600)


class _DepthCollector(Collector):
    """Queue depth per capability, measured when scraped."""

    def __init__(self, kinds: tuple[str, ...], depth: Callable[[str], int]) -> None:
        self._kinds = kinds
        self._depth = depth

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "stoker_queue_depth", "Chunk messages waiting per capability queue", labels=["kind"]
        )
        for kind in self._kinds:
            try:
                family.add_metric([kind], float(self._depth(kind)))
            except Exception:
                continue
        yield family


class _WorkersCollector(Collector):
    """Model loads, evictions, hits and memory per worker pool, from the heartbeats
    workers publish (workers/fleet.py), read when scraped."""

    def __init__(self, workers: Callable[[], list[Any]]) -> None:
        self._workers = workers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["worker", "device"]
        families = {
            name: GaugeMetricFamily(f"stoker_worker_{name}", help_, labels=labels)
            for name, help_ in (
                ("model_loads", "Model loads since the worker started"),
                ("model_evictions", "Models evicted to fit the budget since start"),
                ("model_hits", "Chunks that found their model loaded"),
                ("model_misses", "Chunks that had to load their model"),
                ("memory_used_bytes", "Measured footprint of the loaded models"),
                ("memory_budget_bytes", "The pool's memory budget"),
            )
        }
        try:
            beats = self._workers()
        except Exception:
            beats = []
        for beat in beats:
            for pool in beat.pools:
                key = [beat.hostname, pool.device]
                families["model_loads"].add_metric(key, pool.loads)
                families["model_evictions"].add_metric(key, pool.evictions)
                families["model_hits"].add_metric(key, pool.hits)
                families["model_misses"].add_metric(key, pool.misses)
                families["memory_used_bytes"].add_metric(key, pool.used_bytes)
                families["memory_budget_bytes"].add_metric(key, pool.budget_bytes)
        yield from families.values()


class _JobsCollector(Collector):
    """Jobs by kind and state, from the job store's counters, read when scraped."""

    def __init__(self, counts: Callable[[], dict[tuple[str, str], int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "stoker_jobs", "Jobs in the job store by kind and state", labels=["kind", "state"]
        )
        try:
            counts = self._counts()
        except Exception:  # the store is down: /readyz says so; the scrape goes on
            counts = {}
        for (kind, state), n in sorted(counts.items()):
            family.add_metric([kind, state], float(n))
        yield family


@dataclass
class ApiMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.submitted = Counter(
            "stoker_jobs_submitted",
            "Jobs submitted through the API",
            ["kind"],
            registry=self.registry,
        )
        self.requests = Histogram(
            "stoker_api_request_seconds",
            "API request latency",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.webhook_failures = Counter(
            "stoker_webhook_failures",
            "Webhook delivery attempts that failed",
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "stoker_webhook_deliveries", "Webhooks delivered", registry=self.registry
        )
        self.job_duration = Histogram(
            "stoker_job_duration_seconds",
            "Seconds from submission to end, of jobs this API process saw end",
            ["kind", "state"],
            buckets=DURATION_BUCKETS_S,
            registry=self.registry,
        )
        self.job_run = Histogram(
            "stoker_job_run_seconds",
            "Seconds from first start to end, of jobs this API process saw end",
            ["kind", "state"],
            buckets=DURATION_BUCKETS_S,
            registry=self.registry,
        )
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._seen_lock = threading.Lock()  # request threads and the webhook thread

    def job_seen(self, record: JobRecord) -> JobRecord:
        """Observe ``record``'s durations the first time it is seen ended; returns it."""
        if not record.state.terminal or record.finished_at is None:
            return record
        with self._seen_lock:
            if record.id in self._seen:
                return record
            self._seen[record.id] = None
            if len(self._seen) > SEEN_JOBS:
                self._seen.popitem(last=False)
        labels = (record.kind, record.state.value)
        self.job_duration.labels(*labels).observe(max(0.0, record.finished_at - record.created_at))
        if record.started_at is not None:
            self.job_run.labels(*labels).observe(max(0.0, record.finished_at - record.started_at))
        return record

    def watch_jobs(self, counts: Callable[[], dict[tuple[str, str], int]]) -> None:
        self.registry.register(_JobsCollector(counts))

    def watch_workers(self, workers: Callable[[], list[Any]]) -> None:
        self.registry.register(_WorkersCollector(workers))

    def watch_queues(self, kinds: tuple[str, ...], depth: Callable[[str], int]) -> None:
        self.registry.register(_DepthCollector(kinds, depth))
