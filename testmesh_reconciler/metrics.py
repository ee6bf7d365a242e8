"""Prometheus metrics of one daemon, on its own ``CollectorRegistry`` (never the global).

``Metrics`` owns the registry and every collector; services receive it explicitly and
call its typed helpers. Others add collectors with ``registry=metrics.registry``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from testmesh_reconciler.config.model import KINDS

#: Label children kept per collector (sources and statuses are few; paths are not labels).
_MAX_CACHED_CHILDREN = 256
_RELOAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The daemon's collectors; ``render()`` gives the exposition text for ``/metrics``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.config_reloads = Counter(
            "testmesh_config_reloads", "Config reloads by result (ok, failed, error, unchanged)",
            ["result"], registry=r)
        self.config_reload_duration = Histogram(
            "testmesh_config_reload_duration_seconds",
            "Wall time of a config reload (fetch, load, swap)", buckets=_RELOAD_BUCKETS,
            registry=r)
        self.config_revision = Gauge(
            "testmesh_config_revision_info", "The active config revision (value always 1)",
            ["revision"], registry=r)
        self.config_last_success = Gauge(
            "testmesh_config_last_success_timestamp_seconds",
            "Unix time of the last good config reload", registry=r)
        self.config_snapshot_age = Gauge(
            "testmesh_config_snapshot_age_seconds",
            "Seconds since the active snapshot was loaded (-1 = none yet)", registry=r)
        self.config_problems = Gauge(
            "testmesh_config_problems", "Problems of the last config reload", registry=r)
        self.declarations = Gauge(
            "testmesh_config_declarations", "Declarations of the active snapshot by kind",
            ["kind"], registry=r)
        self.webhooks = Counter(
            "testmesh_webhook_requests", "Webhook requests by source and HTTP status",
            ["source", "status"], registry=r)
        self.runs = Counter(
            "testmesh_runs", "Suite runs finished, by status", ["status"], registry=r)
        self._webhook_children: dict[tuple[str, int], Counter] = {}
        for result in ("ok", "failed", "error", "unchanged"):
            self.config_reloads.labels(result)
        for kind in KINDS:
            self.declarations.labels(kind).set(0)
        self.config_snapshot_age.set(-1)

    def observe_reload(self, result: str, seconds: float) -> None:
        self.config_reloads.labels(result).inc()
        if result != "unchanged":
            self.config_reload_duration.observe(seconds)

    def set_snapshot(self, revision: str, counts: Mapping[str, int], loaded_at: float) -> None:
        self.config_revision.clear()
        self.config_revision.labels(revision).set(1)
        self.config_last_success.set(loaded_at)
        for kind, n in counts.items():
            self.declarations.labels(kind).set(n)

    def track_snapshot_age(self, age: Callable[[], float]) -> None:
        """Compute the snapshot age at scrape time from ``age()`` (seconds, -1 = none)."""
        self.config_snapshot_age.set_function(age)

    def webhook(self, source: str, status: int) -> None:
        key = (source, status)
        child = self._webhook_children.get(key)
        if child is None:  # label lookups take a lock and validate: once per pair
            child = self.webhooks.labels(source, str(status))
            if len(self._webhook_children) < _MAX_CACHED_CHILDREN:
                self._webhook_children[key] = child
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["Metrics"]
