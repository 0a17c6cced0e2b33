"""OpenAI pass-through: `/v1/models` and `/v1/chat/completions` (streaming too), routed by `model`
to the vLLM server that serves that name. Existing OpenAI clients work unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp
import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from appliance.gateway import openapi
from appliance.gateway.upstreams import Upstreams
from appliance.runtime.served import Served

router = APIRouter(tags=["OpenAI compatible"])
RETRY_AFTER_SECONDS = 10
JSON_HEADERS = {"Content-Type": "application/json"}


def error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """OpenAI's error envelope, so clients surface the message."""
    body = {"error": {"message": message, "type": kind, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def unavailable(upstream: Served, why: str) -> JSONResponse:
    return error(
        503,
        f"engine {upstream.served_name} is not ready ({why}); retry later",
        "engine_unavailable",
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _remote_image_urls(body: dict[str, Any]) -> list[str]:
    """image/video URLs that are not inline data: the appliance never fetches from the network."""
    found = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict):
                continue
            for key in ("image_url", "video_url", "input_audio"):
                value = part.get(key)
                url = value.get("url") if isinstance(value, dict) else value
                if isinstance(url, str) and not url.startswith("data:"):
                    found.append(url[:80])
    return found


@router.get(
    "/v1/models",
    summary="Models served by this appliance",
    response_model=None,
    responses={200: {"model": openapi.ModelList, "description": "every served model, ready or not"}}
    | openapi.responses(401),
)
async def list_models(request: Request) -> dict[str, Any]:
    upstreams: Upstreams = request.app.state.upstreams
    http: httpx.AsyncClient = request.app.state.http

    async def one(upstream: Served) -> dict[str, Any]:
        entry = {"id": upstream.served_name, "object": "model", "owned_by": "appliance", "ready": False}
        try:
            answer = await http.get(f"{upstream.base_url}/v1/models", timeout=2)
            listed = {m["id"]: m for m in answer.json().get("data", [])}
            if upstream.served_name in listed:
                entry = listed[upstream.served_name] | {"owned_by": "appliance", "ready": True}
        except (httpx.HTTPError, ValueError):
            pass
        return entry

    return {"object": "list", "data": await asyncio.gather(*(one(u) for u in upstreams.all))}


@router.post(
    "/v1/chat/completions",
    summary="Chat completion, routed to the engine serving `model`",
    responses={200: openapi.CHAT_OK}
    | openapi.responses(
        400, 401, 404, 503, 504, why={400: "not a JSON object, a remote image URL, or refused by the engine"}
    ),
    openapi_extra=openapi.json_body("ChatCompletionRequest"),
)
async def chat_completions(request: Request) -> Response:
    upstreams: Upstreams = request.app.state.upstreams
    raw = await request.body()
    try:
        body = json.loads(raw)
        assert isinstance(body, dict)
    except (ValueError, AssertionError):
        return error(400, "request body must be a JSON object", "invalid_request_error")
    name = body.get("model")
    upstream = upstreams.by_name(name) if isinstance(name, str) else None
    if upstream is None:
        known = ", ".join(upstreams.names)
        return error(404, f"model {name!r} is not served here; known models: {known}", "model_not_found")
    # Per-request processor kwargs are trusted only from the gateway's own PaddleOCR pipeline:
    # a client could otherwise raise max_pixels past what the GPU plan allows.
    if remote := _remote_image_urls(body):
        return error(
            400, f"only data: URLs are accepted (air-gapped appliance), got {remote[0]!r}", "invalid_request_error"
        )
    try:
        openapi.ChatCompletionRequest.model_validate(body, strict=True)  # what the document says, no coercion
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        return error(400, f"invalid request: {problems}", "invalid_request_error")
    if body.pop("mm_processor_kwargs", None) is not None:
        raw = json.dumps(body).encode()  # else the client's bytes go as they came: no re-serialising
    return await forward(request, upstream, "/v1/chat/completions", raw, stream=bool(body.get("stream")))


async def forward(request: Request, upstream: Served, path: str, body: bytes, stream: bool) -> Response:
    """Relay one request body to the engine and its answer back (chunk by chunk when streaming)."""
    session: aiohttp.ClientSession = request.app.state.upstream_session
    metrics = request.app.state.metrics
    gauge = metrics.in_flight.labels(upstream.engine)
    gauge.inc()
    try:
        response = await session.post(f"{upstream.base_url}{path}", data=body, headers=JSON_HEADERS)
    except (aiohttp.ClientError, OSError) as exc:  # TimeoutError (connect, read, total) is an OSError
        gauge.dec()
        if isinstance(exc, TimeoutError):
            metrics.upstream_errors.labels(upstream.engine, "timeout").inc()
            return error(504, f"engine {upstream.served_name} did not answer in time", "upstream_timeout")
        metrics.upstream_errors.labels(upstream.engine, "unreachable").inc()
        return unavailable(upstream, "its server is starting or restarting")
    headers = {k: v for k, v in response.headers.items() if k.lower() in ("content-type", "x-request-id")}
    if stream:

        async def relay():  # type: ignore[no-untyped-def]
            try:
                async for chunk in response.content.iter_any():
                    yield chunk
            finally:
                response.release()
                gauge.dec()

        return StreamingResponse(relay(), status_code=response.status, headers=headers)
    try:
        content = await response.read()
    except (aiohttp.ClientError, OSError):
        metrics.upstream_errors.labels(upstream.engine, "broken").inc()
        return unavailable(upstream, "its server closed the connection mid-answer")
    finally:
        response.release()
        gauge.dec()
    if response.status == 200:
        metrics.count_usage(upstream.engine, _usage(content))
    return Response(content, status_code=response.status, headers=headers)


def _usage(content: bytes) -> dict[str, Any] | None:
    """The `usage` object of a completion, read from its tail (vLLM writes it last) so a long answer
    is not parsed twice on the hot path."""
    at = content.rfind(b'"usage"')
    if at < 0:
        return None
    with contextlib.suppress(ValueError):
        usage, _ = json.JSONDecoder().raw_decode(content[at + 7 :].lstrip(b" :").decode())
        return usage if isinstance(usage, dict) else None
    return None
