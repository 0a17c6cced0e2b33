"""Probes (DESIGN §5): `/livez`, `/startupz`, `/readyz`.

- `/livez`: the gateway process answers.
- `/startupz`: every model's start-up phase and seconds in it; 200 once every essential model is
  ready, else 503 (a Kubernetes startupProbe keeps waiting instead of killing a 2-4 min cold start).
  Also where PaddleOCR-VL's layout model runs (GPU or CPU) and the pages/s that caps
  (appliance/runtime/layout.py): informational, it never holds the probe back.
- `/readyz`: asks the engines themselves: every essential one answers `/health` 200 *and* lists its
  served name in `/v1/models`; optional ones that do not are listed as degraded, not fatal.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from appliance.gateway import openapi
from appliance.manifest import Catalog, Profile
from appliance.runtime import phases
from appliance.runtime.layout import LayoutPlacement
from appliance.runtime.served import Served, served_models

router = APIRouter(tags=["probes"])


@dataclass(frozen=True)
class EngineCheck:
    model: str
    served_name: str
    port: int
    essential: bool
    health: int | None  # /health status; None: nothing answers on the port
    listed: bool  # served name present in /v1/models
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.health == 200 and self.listed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}


class ProbeService:
    """Built once at start-up (app lifespan); holds the profile and one HTTP client for the engines."""

    def __init__(
        self,
        catalog: Catalog,
        profile: Profile,
        client: httpx.AsyncClient,
        run_dir: Path | None = None,
        layout: LayoutPlacement | None = None,
    ) -> None:
        self.catalog = catalog
        self.layout = layout
        self.profile = profile
        self.served = served_models(catalog, profile)
        self.client = client
        self.run_dir = run_dir

    async def check(self, served: Served) -> EngineCheck:
        base = f"http://127.0.0.1:{served.port}"
        health: int | None = None
        try:
            health = (await self.client.get(f"{base}/health")).status_code
            if health != 200:
                return EngineCheck(served.name, served.served_name, served.port, served.essential, health, False)
            response = await self.client.get(f"{base}/v1/models")
            names = [m.get("id") for m in response.json().get("data", [])] if response.status_code == 200 else []
            listed = served.served_name in names
            error = "" if listed else f"/v1/models lists {names or 'nothing'}, not {served.served_name!r}"
            return EngineCheck(served.name, served.served_name, served.port, served.essential, health, listed, error)
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return EngineCheck(served.name, served.served_name, served.port, served.essential, health, False, error)

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks = await asyncio.gather(*(self.check(s) for s in self.served))
        ready = all(c.ok for c in checks if c.essential)
        body = {
            "ready": ready,
            "engines": [c.to_dict() for c in checks],
            "degraded": [c.model for c in checks if not c.essential and not c.ok],
        }
        return ready, body

    def startup(self) -> tuple[bool, dict[str, Any]]:
        report = phases.startup_report(self.catalog, self.profile, self.run_dir)
        started = phases.all_essential_ready(report)
        body = {"started": started, "profile": self.profile.name, "models": [m.to_dict() for m in report]}
        return started, body | {"layout": self.layout.to_dict() if self.layout else None}


def probe_service(request: Request) -> ProbeService:
    return request.app.state.probes


@router.get("/livez", response_model=openapi.Liveness)
async def livez() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    "/startupz",
    response_model=None,
    responses=openapi.probe_responses(openapi.Startup, "an essential model is still starting"),
)
async def startupz(request: Request) -> JSONResponse:
    started, body = probe_service(request).startup()
    return JSONResponse(body, status_code=200 if started else 503)


@router.get(
    "/readyz",
    response_model=None,
    responses=openapi.probe_responses(openapi.Readiness, "an essential engine is not ready"),
)
async def readyz(request: Request) -> JSONResponse:
    ready, body = await probe_service(request).readiness()
    return JSONResponse(body, status_code=200 if ready else 503)
