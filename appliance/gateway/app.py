"""The gateway's FastAPI application: services built once in `lifespan`, each feature its own router.

Probes (`/livez`, `/readyz`, `/startupz`) are open; every other route needs an API key
(`auth.ApiKeyAuth`), including `/metrics` (Prometheus: `authorization.credentials_file`). Errors
of the OCR API are typed (`GatewayError.status_code`) and answered here, in one place.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from appliance import __version__, constants
from appliance.errors import EngineUnavailable, GatewayError
from appliance.gateway import ocr_api, openai_proxy, openapi, probes
from appliance.gateway.auth import ApiKeyAuth, load_keys
from appliance.gateway.engines import ENGINES
from appliance.gateway.engines_setup import build_engines
from appliance.gateway.metrics import Metrics
from appliance.gateway.paddlex_compat import InferRequest
from appliance.gateway.serving import LayoutParsingService, OcrService
from appliance.gateway.upstreams import Upstreams
from appliance.manifest import Catalog
from appliance.runtime.layout import layout_placement
from appliance.runtime.served import served_models

PROBE_TIMEOUT = httpx.Timeout(2.0)  # a probe must answer well within a Kubernetes probe timeout
# A long generation is normal; a dead port is not.
PASS_THROUGH_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=600.0)


def create_app(
    catalog: Catalog | None = None,
    profile: str | None = None,
    run_dir: Path | None = None,
    models_root: Path | None = None,
    api_keys: list[str] | None = None,
) -> FastAPI:
    catalog = catalog or Catalog()
    prof = catalog.profile(profile or constants.profile_name())  # a bad profile fails here, not per request
    served = served_models(catalog, prof)
    models_root = models_root or constants.store_dir()
    auth = ApiKeyAuth(api_keys if api_keys is not None else load_keys())
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # trust_env=False: engines are on loopback; an HTTP(S)_PROXY in the environment must not apply.
        async with (
            httpx.AsyncClient(timeout=PROBE_TIMEOUT, trust_env=False) as probe_client,
            # The OpenAI pass-through's hot path: aiohttp, whose pool hands out an idle connection
            # in O(1) where httpcore's scans and polls every pooled one on each request.
            aiohttp.ClientSession(
                timeout=PASS_THROUGH_TIMEOUT,
                connector=aiohttp.TCPConnector(limit=0, force_close=False),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            ) as upstream_session,
        ):
            layout = layout_placement(catalog, prof, models_root)  # where the layout model runs (GPU or CPU)
            engines = build_engines(catalog, served, models_root, layout)
            app.state.probes = probes.ProbeService(catalog, prof, probe_client, run_dir, layout)
            app.state.http = probe_client  # short calls to the engines: probes, /v1/models listings
            app.state.upstream_session = upstream_session
            app.state.upstreams = Upstreams(served)
            app.state.metrics = metrics
            app.state.ocr = OcrService(engines, observe=metrics.observe_page)
            app.state.layout_parsing = LayoutParsingService(app.state.ocr)
            app.state.engine_health = ocr_api.EngineHealth(
                probe_client, {kind: e.settings.root for kind, e in engines.items()}
            )
            try:
                yield
            finally:
                await app.state.ocr.aclose()

    app = FastAPI(
        title="OCR appliance",
        version=__version__,
        description=(
            f"Profile **{prof.name}**: {', '.join(s.served_name for s in served)}. "
            "Send `Authorization: Bearer <key>` on every route but the probes."
        ),
        lifespan=lifespan,
        generate_unique_id_function=lambda route: route.name,  # operationId: generated clients' function names
    )
    app.include_router(probes.router)
    protected = [Depends(auth)]
    app.include_router(ocr_api.router, dependencies=protected)
    app.include_router(openai_proxy.router, dependencies=protected)
    app.add_api_route(
        "/metrics",
        _metrics_endpoint(metrics),
        dependencies=protected,
        summary="Prometheus metrics",
        name="metrics",
        response_class=Response,
        responses=openapi.METRICS,
    )
    app.add_middleware(metrics.asgi_middleware)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 401 from the key check, 404/405 from routing: the same envelope as every other error
        return openai_proxy.error(exc.status_code, str(exc.detail), "invalid_request_error", exc.headers)

    engines = {s.engine: frozenset(t.value for t in ENGINES[s.engine].tasks) for s in served}
    extra = [ocr_api.OcrJsonRequest, ocr_api.OcrUpload, InferRequest, openapi.ChatCompletionRequest,
             openapi.ChatCompletion]  # fmt: skip

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            open_paths = {r.path for r in probes.router.routes if isinstance(r, APIRoute)}
            models = [s.served_name for s in served]
            app.openapi_schema = openapi.document(
                app, models=models, engines=engines, open_paths=open_paths, extra=extra
            )
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, EngineUnavailable) else None
        if exc.status_code >= 500:
            metrics.upstream_errors.labels(getattr(exc, "engine", "-"), type(exc).__name__).inc()
        return openai_proxy.error(exc.status_code, str(exc), type(exc).__name__, headers)

    return app


def _metrics_endpoint(metrics: Metrics):  # type: ignore[no-untyped-def]
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return metrics_endpoint
