"""The parts of the gateway's OpenAPI document that FastAPI cannot infer from the routes.

Most routes read the raw request (multipart *or* JSON on `/v1/ocr`, PaddleX's lax envelope, the
OpenAI body relayed byte for byte), so their request bodies are declared here with `openapi_extra`,
and every status a route can answer is listed with the model of its body (`responses()`). The
document is the contract integrators on an isolated network generate clients from: tests validate
it, generate a client from it and fuzz the real stack against it (tests/test_gateway_openapi.py,
tests/test_gateway_stack.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

SECURITY_SCHEME = "bearer"


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer as JSON Schema defines it (466.0 is one) for bodies validated strictly, where pydantic
# would refuse 466.0 but must refuse "466" and true, which the document forbids.
JsonInt = Annotated[int, BeforeValidator(_whole)]
PositiveJsonInt = Annotated[int, Field(gt=0), BeforeValidator(_whole)]  # constraint first: into the schema


class ErrorBody(BaseModel):
    message: str
    type: str = Field(description="error class, e.g. engine_unavailable, invalid_request_error")
    code: int = Field(description="the HTTP status")
    param: str | None = Field(default=None, description="relayed from the engine (vLLM) when it names one")


class ErrorResponse(BaseModel):
    """OpenAI's error envelope: every error of the gateway's own routes, so OpenAI clients surface it."""

    error: ErrorBody


WHY: dict[int, str] = {
    400: "malformed document or request",
    401: "missing or invalid API key",
    404: "no such model is served here",
    413: "document above the size, pixel or page limits",
    415: "not a PNG, JPEG, TIFF, WebP or PDF",
    422: "the body does not match this schema, or the engine does not support the task",
    502: "the engine answered something unusable",
    503: "engine not ready (starting or restarting): retry after `Retry-After` seconds",
    504: "the engine did not answer in time",
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
}
WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "`Bearer`", "required": True, "schema": {"const": "Bearer"}}}


def responses(*statuses: int, model: type[BaseModel] = ErrorResponse, why: dict[int, str] | None = None) -> dict:
    """FastAPI `responses=` for error statuses: each with its body model, 401 with `WWW-Authenticate`
    (always the gateway's own envelope: the key is checked before any route runs), 503 with
    `Retry-After`."""
    found: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {
            "model": ErrorResponse if status == 401 else model,
            "description": (why or {}).get(status, WHY[status]),
        }
        if status == 401:
            entry["headers"] = WWW_AUTHENTICATE
        if status in (429, 503):
            entry["headers"] = RETRY_AFTER
        found[status] = entry
    return found


def json_body(ref: str, *, required: bool = True) -> dict[str, Any]:
    """`openapi_extra` declaring a JSON request body by its component schema."""
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}
    return {"requestBody": {"required": required, "content": content}}


def component_schemas(*models: type[BaseModel]) -> dict[str, Any]:
    """JSON Schemas of models only referenced from `openapi_extra`, nested `$defs` hoisted into
    `components/schemas` (FastAPI does this only for models a route declares itself)."""
    from pydantic.json_schema import models_json_schema

    _, top = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    return dict(top.get("$defs", {}))


# --- OpenAI chat completions: permissive where OpenAI's schema is ----------------------------------


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class ImageUrl(BaseModel):
    model_config = ConfigDict(extra="allow")
    url: str = Field(pattern="^data:", description="inline `data:` URL only: the appliance fetches nothing")


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["image_url"]
    image_url: ImageUrl


class VideoUrl(BaseModel):
    model_config = ConfigDict(extra="allow")
    url: str = Field(pattern="^data:", description="inline `data:` URL only: the appliance fetches nothing")


class VideoPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["video_url"]
    video_url: VideoUrl


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart | ImagePart | VideoPart] | None = None


class ChatCompletionRequest(BaseModel):
    """OpenAI's request, checked strictly by the gateway before it goes to vLLM (whose own checks
    coerce `"stream": 0` or `"max_tokens": "8"`); fields not listed are relayed as sent."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(description="a served model name (GET /v1/models)")
    messages: list[ChatMessage]
    stream: bool | None = False
    max_tokens: PositiveJsonInt | None = None


class ChatCompletion(BaseModel):
    """OpenAI's `chat.completion` object, as vLLM answers it (other fields pass through)."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: str
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


class Model(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: str
    owned_by: str
    ready: bool = Field(description="its engine answers and lists it (false: starting or down)")


class ModelList(BaseModel):
    object: str
    data: list[Model]


SSE = {"text/event-stream": {"schema": {"type": "string", "description": "`data: {chat.completion.chunk}` events"}}}
CHAT_OK = {
    "description": "a `chat.completion`, or with `stream: true` its chunks as server-sent events",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletion"}}} | SSE,
}


# --- probes ---------------------------------------------------------------------------------------


class Liveness(BaseModel):
    status: str


class EngineCheck(BaseModel):
    model: str
    served_name: str
    port: int
    essential: bool
    health: int | None = Field(description="its /health status; null: nothing answers on its port")
    listed: bool
    error: str
    ok: bool


class Readiness(BaseModel):
    ready: bool
    engines: list[EngineCheck]
    degraded: list[str] = Field(description="optional models that are not ready")


class ModelStartup(BaseModel):
    model: str
    essential: bool
    phase: str = Field(description="pending, verifying, waiting, loading, ready, failed")
    seconds: float
    port: int
    detail: str


class LayoutPlacement(BaseModel):
    """Where PaddleOCR-VL's layout model runs in the gateway, and the pages/s that caps."""

    model: str = Field(description="the PaddleOCR-VL model whose pipeline runs it")
    layout: str = Field(description="PP-DocLayoutV2 or PP-DocLayoutV3")
    device: str = Field(description="gpu or cpu")
    runtime: str
    model_dir: str
    onnx: bool = Field(description="its ONNX export under ONNX Runtime (else Paddle Inference)")
    wanted_gpu: bool = Field(description="a GPU profile: on the CPU it caps the appliance")
    detail: str
    gpu_mem_limit: int | None = Field(description="ONNX Runtime's arena cap on the GPU, bytes")
    seconds_per_page: float = Field(description="public figure for the layout model on this device")
    cap_pages_per_second: float = Field(description="1 / seconds_per_page: its calls are serialised")
    summary: str


class Startup(BaseModel):
    started: bool
    profile: str
    models: list[ModelStartup]
    layout: LayoutPlacement | None = Field(description="null: no PaddleOCR-VL model with a layout model")


def probe_responses(model: type[BaseModel], not_yet: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": model}, 503: {"model": model, "description": not_yet}}


# --- the document ---------------------------------------------------------------------------------

METRICS = {
    200: {"description": "Prometheus text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}
} | responses(401)


def document(
    app: Any,
    *,
    models: list[str],
    engines: dict[str, frozenset[str]],
    open_paths: set[str],
    extra: list[type[BaseModel]],
) -> dict[str, Any]:
    """FastAPI's document plus what only the profile knows: the served model names and engines (enums,
    so generated data reaches a real engine), the tasks an engine lacks, and the bearer scheme on
    every route but the probes."""
    from fastapi.openapi.utils import get_openapi

    spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, schema in component_schemas(*extra).items():
        schemas.setdefault(name, schema)
    components["securitySchemes"] = {SECURITY_SCHEME: {"type": "http", "scheme": "bearer"}}
    for path, item in spec["paths"].items():
        if path not in open_paths:
            for operation in item.values():
                operation["security"] = [{SECURITY_SCHEME: []}]
    form = schemas["OcrUpload"]["properties"]
    # a form has no null: pages is a string or absent
    form["pages"] = {k: v for k, v in form["pages"].items() if k not in ("anyOf", "default")} | form["pages"]["anyOf"][
        0
    ]
    schemas["OcrJsonRequest"]["properties"]["file"]["minLength"] = 1  # an empty upload is refused (400)
    schemas["InferRequest"]["properties"]["file"]["minLength"] = 1
    # An engine that lacks a task answers 422 (dots.ocr reads no charts): the schema says so.
    every = sorted(_all_tasks())
    others = ["auto", *engines]
    limits = [  # "another engine, or one of its tasks": tools judge no `if`/`not` over a binary part
        {
            "anyOf": [
                {"properties": {"engine": {"enum": [e for e in others if e != kind]}}},
                {"properties": {"task": {"enum": sorted(tasks)}}},
            ]
        }
        for kind, tasks in engines.items()
        if sorted(tasks) != every
    ]
    for name in ("OcrJsonRequest", "OcrUpload"):
        schemas[name]["properties"]["engine"]["enum"] = ["auto", *engines]
        if limits:
            schemas[name]["allOf"] = limits
    schemas["ChatCompletionRequest"]["properties"]["model"]["enum"] = models
    return spec


def _all_tasks() -> frozenset[str]:
    from appliance.gateway.protocol import Task

    return frozenset(t.value for t in Task)
