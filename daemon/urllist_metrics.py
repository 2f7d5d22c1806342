"""Prometheus gauges of URL-list jobs, set from the runners' reports (once a second per
job, from the queue's aggregate counters): samples by status or failure class, shards by
state, samples and bytes per second. Gauges, not counters: ``retry --failed`` moves
samples out of their failure class."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge


class UrllistMetrics:
    """``acquired_urllist_samples{job,status}``, ``acquired_urllist_shards{job,state}``,
    ``acquired_urllist_samples_per_second{job}``, ``acquired_urllist_bytes_per_second{job}``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.samples = Gauge(
            "acquired_urllist_samples",
            "URL-list samples accounted for, by status ('ok') or failure class",
            ["job", "status"],
            registry=registry,
        )
        self.shards = Gauge(
            "acquired_urllist_shards",
            "URL-list shards by state",
            ["job", "state"],
            registry=registry,
        )
        self.rate = Gauge(
            "acquired_urllist_samples_per_second", "Samples per second", ["job"], registry=registry
        )
        self.bytes_rate = Gauge(
            "acquired_urllist_bytes_per_second", "Bytes per second", ["job"], registry=registry
        )

    def update(self, report: Any) -> None:
        """Set the gauges of one job from a ``UrllistReport``."""
        job = report.job_id
        for status, n in report.samples.items():
            self.samples.labels(job, status).set(n)
        for state, n in report.shards.items():
            self.shards.labels(job, state).set(n)
        self.rate.labels(job).set(report.samples_per_s)
        self.bytes_rate.labels(job).set(report.bytes_per_s)
