"""Prometheus metrics of one API process, in a registry of its own (one per app, so
tests can build many apps in one process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


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

    def watch_queues(self, kinds: tuple[str, ...], depth: Callable[[str], int]) -> None:
        self.registry.register(_DepthCollector(kinds, depth))
