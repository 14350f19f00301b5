"""Prometheus metrics for operators, read from the node's job store at scrape time.

Reading the store on each scrape (a custom collector) instead of incrementing counters in the
worker keeps the figures right across restarts and processes (the SCP, the worker and the
web page share one SQLite store), and needs no hooks in the receive path. Each node gets
its own ``CollectorRegistry``, so several nodes (tests) can run in one process.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from cxr_triage.contract.result import Decision
from cxr_triage.dicom_node.web.worklist import QueueStats, WorklistSource

log = logging.getLogger(__name__)

PREFIX = "cxr_triage"
#: Receipt -> result, seconds. The default quiet period alone is 10 s.
LATENCY_BUCKETS: tuple[float, ...] = (0.5, 1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 1800, 3600)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def histogram_buckets(values: Iterable[float], bounds: Iterable[float] = LATENCY_BUCKETS) -> tuple[list[tuple[str, float]], float]:
    """Cumulative (le, count) pairs ending with +Inf, and the sum, for one histogram."""
    vals = sorted(float(v) for v in values)
    out: list[tuple[str, float]] = []
    i = 0
    for b in bounds:
        while i < len(vals) and vals[i] <= b:
            i += 1
        out.append((repr(float(b)), float(i)))
    out.append(("+Inf", float(len(vals))))
    return out, float(sum(vals))


class NodeCollector(Collector):
    """Turns :class:`QueueStats` into metric families on every scrape."""

    def __init__(self, source: WorklistSource, model_info: Callable[[], dict[str, str]] | dict[str, str] | None = None,
                 clock: Callable[[], float] = time.time, node_name: str = ""):
        self._source = source
        self._node_name = node_name
        self._model_info = model_info
        self._clock = clock

    def _model(self) -> dict[str, str]:
        try:  # the store's latest result names the model: none while the store is down
            info = self._model_info() if callable(self._model_info) else (self._model_info or {})
        except sqlite3.OperationalError:
            info = {}
        return {k: str(v) for k, v in info.items() if v is not None}

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(f"{PREFIX}_store_up", "1 when the job store could be read for this scrape")
        try:
            stats = self._source.stats()
        except Exception:  # a scrape must answer even when the store is locked or gone
            log.exception("metrics: reading the job store failed")
            up.add_metric([], 0.0)
            yield up
            yield from self._model_family()
            return
        up.add_metric([], 1.0)
        yield up
        yield from self._families(stats)
        yield from self._model_family()

    def _families(self, s: QueueStats) -> Iterator[Metric]:
        yield CounterMetricFamily(f"{PREFIX}_instances_received", "DICOM instances received and stored durably",
                                  value=float(s.instances_received))
        triaged = CounterMetricFamily(f"{PREFIX}_studies_triaged", "Studies with a triage result, by decision",
                                      labels=["decision"])
        for d in Decision:
            triaged.add_metric([d.value], float(s.studies_by_decision.get(d.value, 0)))
        yield triaged
        buckets, total = histogram_buckets(s.latencies_s)
        yield HistogramMetricFamily(f"{PREFIX}_study_latency_seconds",
                                    "Time from the first instance received to the study's result",
                                    buckets=buckets, sum_value=total)
        yield GaugeMetricFamily(f"{PREFIX}_queue_depth", "Jobs not finished (waiting, triaging or delivering)",
                                value=float(s.queue_depth))
        age = 0.0 if s.oldest_pending_received_at is None else max(0.0, self._clock() - s.oldest_pending_received_at)
        yield GaugeMetricFamily(f"{PREFIX}_oldest_pending_age_seconds",
                                "Age of the oldest unfinished job (0 when none)", value=age)
        yield CounterMetricFamily(f"{PREFIX}_delivery_failures", "Failed attempts to deliver a result",
                                  value=float(s.delivery_failures))
        yield GaugeMetricFamily(f"{PREFIX}_dead_letters", "Results given up on after the dead-letter age",
                                value=float(s.dead_letters))

    def _model_family(self) -> Iterator[Metric]:
        if self._node_name:            # several nodes on one database: which one answers
            node = InfoMetricFamily(f"{PREFIX}_node", "The node this scrape reads (its [store] node_name)")
            node.add_metric([], {"node": self._node_name})
            yield node
        info = self._model()
        if info:
            fam = InfoMetricFamily(f"{PREFIX}_model", "The model the node triages with")
            fam.add_metric([], info)
            yield fam


def build_registry(source: WorklistSource, model_info: Callable[[], dict[str, str]] | dict[str, str] | None = None,
                   extra: Iterable[Collector] = (), node_name: str = "") -> CollectorRegistry:
    """A fresh registry (never the global one) holding this node's collector(s);
    ``node_name`` (when given) as ``cxr_triage_node_info{node="..."}``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(source, model_info, node_name=node_name))
    for collector in extra:
        registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format for ``/metrics``."""
    return generate_latest(registry)
