"""The proxy's Prometheus instruments, all on one registry built by the app factory."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

UPSTREAM_ERROR_REASONS = ("connect", "timeout", "reset", "protocol")


class Instruments:
    """Every metric the proxy exports. Implements ``app.proxy.relay.Observer``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # The *_created series double the exposition for no use in Grafana.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.upstream_up = Gauge(
            "ollama_upstream_up",
            "1 when the last attempt to reach Ollama succeeded, 0 when it failed.",
            registry=registry,
        )
        self.upstream_errors = Counter(
            "ollama_upstream_errors",
            "Requests that failed to reach Ollama or were broken off by it, by reason.",
            ["reason"],
            registry=registry,
        )
        for reason in UPSTREAM_ERROR_REASONS:
            self.upstream_errors.labels(reason)

    def upstream_reached(self) -> None:
        self.upstream_up.set(1)

    def upstream_failed(self, reason: str) -> None:
        self.upstream_errors.labels(reason).inc()
        if reason == "connect":
            self.upstream_up.set(0)
