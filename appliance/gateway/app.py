"""The gateway's FastAPI application: services built once in `lifespan`, each feature its own router."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI

from appliance import constants
from appliance.gateway import probes
from appliance.manifest import Catalog

ENGINE_TIMEOUT = httpx.Timeout(2.0)  # a probe must answer well within a Kubernetes probe timeout


def create_app(catalog: Catalog | None = None, profile: str | None = None, run_dir: Path | None = None) -> FastAPI:
    catalog = catalog or Catalog()
    prof = catalog.profile(profile or constants.profile_name())  # a bad profile fails here, not per request

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # trust_env=False: engines are on loopback; an HTTP(S)_PROXY in the environment must not apply.
        async with httpx.AsyncClient(timeout=ENGINE_TIMEOUT, trust_env=False) as client:
            app.state.probes = probes.ProbeService(catalog, prof, client, run_dir)
            yield

    app = FastAPI(title="OCR appliance gateway", lifespan=lifespan)
    app.include_router(probes.router)
    return app
