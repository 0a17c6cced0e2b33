"""Probe timings derived from the profile (DESIGN §5): one formula for the Dockerfile HEALTHCHECK,
the Kubernetes probes and compose files.

vLLM servers start one after another, each gated on the previous one's /health, so the time to
ready is the *sum* of the served models' measured cold starts. A probe that gives up before that
kills a container in the middle of a normal 2-4 minute start (a field failure), so the start
period is that sum times a safety factor, plus a margin for `verify --fast`, supervisord and the
gateway, rounded up to whole ten seconds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from appliance.manifest import SERVED_ENGINES, Catalog, Profile

SAFETY_FACTOR = 1.5
MARGIN_SECONDS = 30  # verify --fast, supervisord and the gateway, before and after the engines
INTERVAL_SECONDS = 10
TIMEOUT_SECONDS = 5
FAILURE_THRESHOLD = 3  # consecutive failures after start-up before the container is unhealthy


def start_period_seconds(cold_start_seconds: float) -> int:
    """Seconds a probe must wait before failures count, for engines that need `cold_start_seconds` in total."""
    return math.ceil((cold_start_seconds * SAFETY_FACTOR + MARGIN_SECONDS) / 10) * 10


@dataclass(frozen=True)
class ProbeValues:
    gateway_port: int
    cold_start_seconds: float  # sum over the served models (they start sequentially)
    start_period_seconds: int  # HEALTHCHECK --start-period; the startup probe's whole budget
    interval_seconds: int = INTERVAL_SECONDS
    timeout_seconds: int = TIMEOUT_SECONDS
    failure_threshold: int = FAILURE_THRESHOLD
    liveness_path: str = "/livez"
    readiness_path: str = "/readyz"
    startup_path: str = "/startupz"

    @property
    def startup_failure_threshold(self) -> int:
        """Kubernetes startupProbe.failureThreshold at `interval_seconds` covering the start period."""
        return math.ceil(self.start_period_seconds / self.interval_seconds)

    @property
    def readiness_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}{self.readiness_path}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"startup_failure_threshold": self.startup_failure_threshold}


def probe_values(catalog: Catalog, profile: Profile) -> ProbeValues:
    """Probe timings for `profile`: the served models' cold starts summed, times the safety factor."""
    served = [m for m in profile.models if catalog.model(m.model).engine in SERVED_ENGINES]
    cold = sum(catalog.model(m.model).resources.cold_start_seconds for m in served)
    return ProbeValues(
        gateway_port=profile.gateway_port,
        cold_start_seconds=cold,
        start_period_seconds=start_period_seconds(cold),
    )
