"""Prometheus metrics of the gateway (served at /metrics, never counted themselves)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.gateway.engines.base import is_truncated
from appliance.gateway.protocol import PageResult

UNTRACKED = frozenset({"/metrics", "/livez", "/readyz", "/startupz"})


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "appliance_requests", "HTTP requests", ["route", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "appliance_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.pages = Counter("appliance_pages", "Pages sent to an engine", ["engine"], registry=self.registry)
        self.tokens = Counter("appliance_tokens", "Tokens reported by vLLM", ["engine", "kind"], registry=self.registry)
        self.in_flight = Gauge(
            "appliance_engine_in_flight", "Requests waiting on an engine", ["engine"], registry=self.registry
        )
        self.upstream_errors = Counter(
            "appliance_upstream_errors", "Engine calls that failed", ["engine", "reason"], registry=self.registry
        )
        self.truncated_pages = Counter(
            "appliance_truncated_pages",
            "Pages whose answer stopped at the token limit (finish_reason=length): their end is missing",
            ["engine"],
            registry=self.registry,
        )

    def observe_page(self, page: PageResult) -> None:
        """Called for every page an engine read (OcrService's `observe`)."""
        if is_truncated(page):
            self.truncated_pages.labels(page.engine).inc()

    def count_usage(self, engine: str, usage: dict | None) -> None:  # type: ignore[type-arg]
        if usage:
            self.tokens.labels(engine, "prompt").inc(usage.get("prompt_tokens") or 0)
            self.tokens.labels(engine, "completion").inc(usage.get("completion_tokens") or 0)

    def asgi_middleware(self, app: ASGIApp) -> ASGIApp:
        """Pure ASGI (no BaseHTTPMiddleware, whose per-request task and stream wrapping cost more
        than the rest of a pass-through request)."""

        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope["path"] in UNTRACKED:
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500

            async def record_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, record_status)
            finally:
                # The route template (not the raw path) keeps label cardinality bounded.
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                self.requests.labels(route, scope["method"], str(status)).inc()
                self.latency.labels(route).observe(time.perf_counter() - started)

        return middleware
