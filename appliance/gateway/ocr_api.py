"""`POST /v1/ocr` (our API) and `POST /layout-parsing` (PaddleX's), thin over `serving.py`.

`/v1/ocr` takes either a multipart upload (`file` + form fields) or JSON with the file as base64;
the same options either way. `engine=auto` picks the first *ready* engine that supports the task,
in the order PaddleOCR-VL, dots.ocr, Qwen3-VL. Errors are typed (`appliance.errors.GatewayError`
carries its HTTP status) and answered by the app's one exception handler.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Literal

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.errors import DocumentError, DocumentTooLargeError, EngineUnavailable, GatewayError
from appliance.gateway import openapi, paddlex_compat
from appliance.gateway.documents import DEFAULT_DPI
from appliance.gateway.openapi import JsonInt
from appliance.gateway.protocol import DocumentResult, Task
from appliance.gateway.serving import LayoutParsingService, OcrService

router = APIRouter(tags=["OCR"])
AUTO_ORDER = ("paddleocr-vl", "dots-ocr", "qwen3-vl")
EngineName = Literal["auto", "paddleocr-vl", "dots-ocr", "qwen3-vl"]
# What `documents.parse_page_range` accepts (a reversed range is still refused, with 400).
PAGES_PATTERN = r"^\s*[1-9][0-9]{0,5}\s*(-\s*([1-9][0-9]{0,5})?)?\s*$"


class OcrOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engine: EngineName = Field("auto", description="engine to use; auto: the first ready one that supports the task")
    task: Task = Field(Task.layout, description="what to read")
    dpi: JsonInt = Field(DEFAULT_DPI, ge=36, le=600, description="PDF rendering resolution")
    pages: str | None = Field(
        None, description='PDF/TIFF page range, e.g. "1-3" or "2-" (1-based)', max_length=32, pattern=PAGES_PATTERN
    )


class OcrJsonRequest(OcrOptions):
    file: str = Field(
        description="the document (PNG, JPEG, TIFF, WebP or PDF), base64-encoded",
        json_schema_extra={"format": "byte", "contentEncoding": "base64"},
    )


class OcrUpload(OcrOptions):
    """The multipart form: the file's bytes and the same options as form fields."""

    file: bytes = Field(
        description="the document: PNG, JPEG, TIFF, WebP or PDF", json_schema_extra={"format": "binary"}
    )


OCR_ERRORS = openapi.responses(400, 401, 413, 415, 422, 502, 503, 504)
PADDLEX_ERRORS = openapi.responses(
    400, 401, 413, 415, 422, 502, 503, 504, model=paddlex_compat.AIStudioNoResultResponse
)
# multipart: the same options as form fields next to the file's bytes
OCR_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"$ref": "#/components/schemas/OcrUpload"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/OcrJsonRequest"}},
        },
    }
}


class EngineHealth:
    """Cached `/health` of each engine (a 2 s memory keeps `auto` cheap under load)."""

    def __init__(self, http: httpx.AsyncClient, urls: dict[str, str], ttl: float = 2.0) -> None:
        self.http, self.urls, self.ttl = http, urls, ttl
        self._seen: dict[str, tuple[float, bool]] = {}

    async def ready(self, engine: str) -> bool:
        now = time.monotonic()
        seen = self._seen.get(engine)
        if seen and now - seen[0] < self.ttl:
            return seen[1]
        try:
            ok = (await self.http.get(f"{self.urls[engine]}/health", timeout=2)).status_code == 200
        except httpx.HTTPError:
            ok = False
        self._seen[engine] = (now, ok)
        return ok


async def choose_engine(request: Request, name: str, task: Task) -> str:
    if name != "auto":
        return name
    service: OcrService = request.app.state.ocr
    health: EngineHealth = request.app.state.engine_health
    candidates = [e for e in AUTO_ORDER if e in service.engines and task in service.engines[e].tasks]
    for engine in candidates:
        if await health.ready(engine):
            return engine
    raise EngineUnavailable("auto", f"no engine for task {task.value!r} is ready ({', '.join(candidates) or 'none'})")


async def _parse(request: Request, max_bytes: int) -> tuple[bytes, OcrOptions]:
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=8)
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise DocumentError("multipart request without a 'file' part")
            data = await upload.read(max_bytes + 1)
            options = OcrOptions.model_validate({k: v for k, v in form.items() if k != "file"})
        elif content_type.startswith("application/json"):
            # strict: JSON has types; "72" for dpi or 1 for pages is refused as the document says.
            body = OcrJsonRequest.model_validate_json(await request.body(), strict=True)
            try:
                data = base64.b64decode(body.file, validate=True)
            except (binascii.Error, ValueError):
                raise DocumentError("'file' is not valid base64") from None
            options = OcrOptions.model_validate(body.model_dump(exclude={"file"}))
        else:
            raise DocumentError("send multipart/form-data with a 'file' part, or JSON with 'file' as base64")
    except ValidationError as exc:
        raise OptionsError(exc) from None
    if len(data) > max_bytes:
        raise DocumentTooLargeError(f"upload is larger than {max_bytes} bytes")
    return data, options


class OptionsError(GatewayError, ValueError):
    status_code = 422

    def __init__(self, exc: ValidationError) -> None:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        super().__init__(f"invalid options: {problems}")


@router.post(
    "/v1/ocr",
    summary="Read a scanned page or PDF: Markdown plus layout blocks per page",
    response_model=DocumentResult,
    responses=OCR_ERRORS,
    openapi_extra=OCR_BODY,
)
async def ocr(request: Request) -> DocumentResult:
    service: OcrService = request.app.state.ocr
    data, options = await _parse(request, service.limits.max_upload_bytes)
    started = time.perf_counter()
    document = await service.decode(data, dpi=options.dpi, page_range=options.pages)
    decoded = time.perf_counter() - started
    engine = await choose_engine(request, options.engine, options.task)
    result = await service.read_document(document, engine=engine, task=options.task, decode_seconds=decoded)
    request.app.state.metrics.pages.labels(result.engine).inc(len(result.pages))
    return result


@router.post(
    paddlex_compat.INFER_ENDPOINT,
    summary="PaddleX-compatible layout parsing (existing PaddleOCR-VL service clients work unchanged)",
    tags=["PaddleX compatible"],
    response_model=paddlex_compat.AIStudioResultResponse[paddlex_compat.InferResult],
    response_model_exclude_none=True,
    responses=PADDLEX_ERRORS,
    openapi_extra=openapi.json_body("InferRequest"),
)
async def layout_parsing(request: Request) -> JSONResponse:
    service: LayoutParsingService = request.app.state.layout_parsing
    log_id = None
    try:
        # strict as the document: JSON types are not coerced ("0.5" is not a number)
        body = paddlex_compat.InferRequest.model_validate_json(await request.body(), strict=True)
        log_id = body.logId
        answer = await service.infer(body)
    except ValidationError as exc:
        return _paddlex_error(422, str(OptionsError(exc)), log_id)
    except GatewayError as exc:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, EngineUnavailable) else None
        return _paddlex_error(exc.status_code, str(exc), log_id, headers)
    request.app.state.metrics.pages.labels(service.engine_name).inc(len(answer.result.layoutParsingResults))
    return JSONResponse(paddlex_compat.dump(answer))


def _paddlex_error(
    status: int, message: str, log_id: str | None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = paddlex_compat.dump(paddlex_compat.error_response(status, message, log_id))
    return JSONResponse(body, status_code=status, headers=headers)
