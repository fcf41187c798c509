"""Prometheus metrics of the gateway, in a registry of their own per app.

Requests are labelled by route *template* (``/v1/{name=members/*}``), never by
raw path, so the number of series stays bounded; requests that match no route
are labelled ``unmatched``.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

UNMATCHED = "unmatched"


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        labels = ["method", "route", "code"]
        self.requests = Counter(
            "mall_gateway_requests_total", "HTTP requests served.", labels, registry=self.registry
        )
        self.duration = Histogram(
            "mall_gateway_request_duration_seconds",
            "Time to serve an HTTP request.",
            labels,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )

        #: (method, route, code) -> the counter and histogram children of those labels. Bounded like
        #: the series: methods, route templates (or "unmatched") and status codes are finite.
        self._children: dict[tuple[str, str, int], tuple] = {}

    def observe(self, method: str, route: str, code: int, seconds: float) -> None:
        key = (method, route, code)
        children = self._children.get(key)
        if children is None:
            labels = (method, route, str(code))
            children = self._children[key] = (self.requests.labels(*labels), self.duration.labels(*labels))
        children[0].inc()
        children[1].observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
