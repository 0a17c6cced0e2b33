"""OCR services: bytes in, results out. No FastAPI here — the routers only call these.

Built once at start-up (in the app's lifespan) from the configured engines:

    service = OcrService({"dots-ocr": engine, ...}, default_engine="dots-ocr")
    result = await service.read(data, engine="dots-ocr", task=Task.layout, page_range="1-3")
    body = await LayoutParsingService(service).infer(InferRequest(file=b64, fileType=0))

Errors are raised typed (`appliance.errors`: DocumentError 4xx, TaskNotSupportedError 422,
EngineUnavailable 503 with `retry_after`, EngineTimeout 504, EngineError 502); the API layer maps
`error.status_code`. Pages of one document are read concurrently, at most as many at once as the
engine has slots, in page order in the result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from appliance.errors import GatewayError, TaskNotSupportedError
from appliance.gateway import paddlex_compat
from appliance.gateway.documents import DEFAULT_DPI, Document, Limits, decode_document, parse_page_range
from appliance.gateway.engines.base import Engine
from appliance.gateway.protocol import DocumentResult, PageResult, Task


class UnknownEngineError(GatewayError, LookupError):
    status_code = 400

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown engine {name!r}; configured: {', '.join(sorted(known)) or '(none)'}")

    def __str__(self) -> str:
        return str(self.args[0])


class OcrService:
    def __init__(self, engines: Mapping[str, Engine], *, default_engine: str | None = None,
                 limits: Limits | None = None,
                 observe: Callable[[PageResult], None] | None = None) -> None:  # fmt: skip
        """`observe` sees every page read, whichever route asked (the gateway counts truncated ones)."""
        if not engines:
            raise ValueError("OcrService needs at least one engine")
        self.engines = dict(engines)
        self.default_engine = default_engine or next(iter(self.engines))
        if self.default_engine not in self.engines:
            raise ValueError(f"default engine {self.default_engine!r} is not configured")
        self.limits = limits or Limits()
        self.observe = observe

    def engine(self, name: str | None) -> Engine:
        name = name or self.default_engine
        try:
            return self.engines[name]
        except KeyError:
            raise UnknownEngineError(name, list(self.engines)) from None

    async def decode(self, data: bytes, *, dpi: int = DEFAULT_DPI, page_range: str | None = None) -> Document:
        """Decode in a worker thread (PDF rendering and image decoding are CPU-bound)."""
        pages = parse_page_range(page_range)
        return await asyncio.to_thread(decode_document, data, limits=self.limits, dpi=dpi, page_range=pages)

    async def read_pages(self, engine: Engine, document: Document, task: Task) -> list[PageResult]:
        window = asyncio.Semaphore(engine.settings.max_concurrency)

        async def one(page):
            async with window:
                return await engine.ocr(page, task)

        pages = list(await asyncio.gather(*(one(page) for page in document.pages)))
        if self.observe is not None:
            for page in pages:
                self.observe(page)
        return pages

    async def read(self, data: bytes, *, engine: str | None = None, task: Task = Task.layout,
                   dpi: int = DEFAULT_DPI, page_range: str | None = None) -> DocumentResult:  # fmt: skip
        self._check(self.engine(engine), task)  # before decoding: a typo costs nothing
        started = time.perf_counter()
        document = await self.decode(data, dpi=dpi, page_range=page_range)
        return await self.read_document(
            document, engine=engine, task=task, decode_seconds=time.perf_counter() - started
        )

    async def read_document(self, document: Document, *, engine: str | None = None, task: Task = Task.layout,
                            decode_seconds: float = 0.0) -> DocumentResult:  # fmt: skip
        """Read an already decoded document (the API decodes first: a bad upload is a 4xx whatever
        the engines' state)."""
        chosen = self.engine(engine)
        self._check(chosen, task)
        started = time.perf_counter()
        pages = await self.read_pages(chosen, document, task)
        ocr_seconds = time.perf_counter() - started
        return DocumentResult(
            engine=chosen.kind,
            model=chosen.model,
            task=task,
            kind=document.kind,
            total_pages=document.total_pages,
            markdown="\n\n---\n\n".join(p.markdown for p in pages),
            pages=pages,
            timings={
                "decode": round(decode_seconds, 4),
                "ocr": round(ocr_seconds, 4),
                "total": round(decode_seconds + ocr_seconds, 4),
            },
        )

    @staticmethod
    def _check(engine: Engine, task: Task) -> None:
        if task not in engine.tasks:
            raise TaskNotSupportedError(f"{engine.kind}: task {task.value!r} is not supported")

    async def aclose(self) -> None:
        await asyncio.gather(*(e.aclose() for e in self.engines.values()))


class LayoutParsingService:
    """PaddleX-compatible `/layout-parsing` on top of one engine (PaddleOCR-VL by default)."""

    def __init__(self, ocr: OcrService, engine: str | None = None) -> None:
        self.ocr = ocr
        self.engine_name = engine or ("paddleocr-vl" if "paddleocr-vl" in ocr.engines else ocr.default_engine)

    async def infer(
        self, request: paddlex_compat.InferRequest
    ) -> paddlex_compat.AIStudioResultResponse[paddlex_compat.InferResult]:
        log_id = request.logId or paddlex_compat.generate_log_id()
        engine = self.ocr.engine(self.engine_name)
        has_layout = getattr(engine, "has_layout", True)
        task = paddlex_compat.task_of(request, has_layout=has_layout)
        data = paddlex_compat.decode_file(request, self.ocr.limits.max_upload_bytes)
        document = await self.ocr.decode(data, dpi=paddlex_compat.PDF_DPI)
        pages = await self.ocr.read_pages(engine, document, task)
        return paddlex_compat.infer_response(request, document, pages, log_id)
