"""What every engine adapter shares: bounded concurrency, timeouts, typed upstream errors, timings.

An adapter is built once (at gateway start-up) with its vLLM server's base URL and served model
name, and answers `await engine.ocr(page, task) -> PageResult`. Concurrency per engine is bounded by
a semaphore; a request that waits longer than `queue_timeout_s` for a slot is refused with
`EngineUnavailable` (503 + Retry-After), one whose upstream call exceeds `timeout_s` with
`EngineTimeout` (504). Connection refused / 5xx from vLLM → `EngineUnavailable`; any other unusable
answer → `EngineError` (502). An answer that stopped at the token limit (`finish_reason == "length"`)
is kept, and its page's `warnings` say so (`truncation_warning`, counted by the gateway's metrics).
Nothing here imports FastAPI.
"""

from __future__ import annotations

import abc
import asyncio
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from appliance.errors import EngineError, EngineTimeout, EngineUnavailable, TaskNotSupportedError
from appliance.gateway.documents import PageImage
from appliance.gateway.protocol import Block, PageResult, Task

# Start of the warning on a page whose answer stopped at the token limit (what /metrics counts).
TRUNCATED = "truncated:"


def truncation_warning(limit: int | None) -> str:
    cap = f"the output cap of {limit} tokens" if limit else "the token limit"
    return f"{TRUNCATED} the answer stopped at {cap} (finish_reason=length): the end of the page is missing"


def is_truncated(page: PageResult) -> bool:
    return any(w.startswith(TRUNCATED) for w in page.warnings)


@dataclass(frozen=True)
class Completion:
    """One chat answer: its text and why generation stopped ("stop", "length", …; None if unsaid)."""

    text: str
    finish_reason: str | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass(frozen=True)
class EngineSettings:
    """How the gateway reaches one vLLM server and how hard it may push it."""

    base_url: str  # the server root, e.g. http://127.0.0.1:8101 (no /v1)
    served_name: str  # --served-model-name
    max_concurrency: int = 4  # in-flight requests from this gateway (≈ the server's --max-num-seqs)
    timeout_s: float = 300.0  # one page, upstream
    queue_timeout_s: float = 30.0  # waiting for a free slot before answering 503
    max_new_tokens: int | None = None  # None: the engine's default (bounded by the server's max_model_len)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {self.base_url!r}: expected http://host:port")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")

    @property
    def root(self) -> str:
        url = self.base_url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url


class Engine(abc.ABC):
    """Base of the three adapters; subclasses implement `_read`."""

    kind: ClassVar[str]
    tasks: ClassVar[frozenset[Task]] = frozenset(Task)

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self._slots = asyncio.Semaphore(settings.max_concurrency)

    @property
    def model(self) -> str:
        return self.settings.served_name

    async def ocr(self, page: PageImage, task: Task) -> PageResult:
        if task not in self.tasks:
            raise TaskNotSupportedError(
                f"{self.kind}: task {task.value!r} is not supported (supported: {_names(self.tasks)})"
            )
        queued = time.perf_counter()
        try:
            await asyncio.wait_for(self._slots.acquire(), self.settings.queue_timeout_s)
        except TimeoutError:
            raise EngineUnavailable(
                self.kind, f"all {self.settings.max_concurrency} slots busy for {self.settings.queue_timeout_s:.0f} s"
            ) from None
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(self._read(page, task), self.settings.timeout_s)
        except TimeoutError:
            raise EngineTimeout(self.kind, f"no answer within {self.settings.timeout_s:.0f} s") from None
        finally:
            self._slots.release()
        result.timings.setdefault("queue", round(started - queued, 4))
        result.timings.setdefault("engine", round(time.perf_counter() - started, 4))
        return result

    @abc.abstractmethod
    async def _read(self, page: PageImage, task: Task) -> PageResult: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients and threads (called at gateway shutdown)."""

    def _result(
        self, page: PageImage, task: Task, markdown: str, blocks: list[Block], warnings: list[str] | None = None
    ) -> PageResult:
        return PageResult(
            page=page.number,
            width=page.width,
            height=page.height,
            markdown=markdown,
            blocks=blocks,
            engine=self.kind,
            model=self.model,
            task=task,
            warnings=warnings or [],
        )


def _names(tasks: frozenset[Task]) -> str:
    return ", ".join(sorted(t.value for t in tasks))


class ChatClient:
    """Minimal OpenAI-compatible chat client for one vLLM server: one image + one prompt → text."""

    def __init__(
        self, engine: str, settings: EngineSettings, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self._http = httpx.AsyncClient(
            base_url=settings.root,
            timeout=httpx.Timeout(settings.timeout_s, connect=5.0),
            transport=transport,
            trust_env=False,  # never through a proxy: the servers are on loopback
        )

    async def complete(
        self,
        page: PageImage,
        prompt: str,
        *,
        system: str | None = None,
        max_tokens: int | None = None,
        image_format: str = "PNG",
        **sampling: Any,
    ) -> Completion:
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": page.data_url(image_format)}},
                    {"type": "text", "text": prompt},
                ],
            }
        )
        body: dict[str, Any] = {"model": self.settings.served_name, "messages": messages, "temperature": 0.0}
        body.update(sampling)
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        data = await self.post("/v1/chat/completions", body)
        try:
            choice = data["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise EngineError(self.engine, f"answer without choices[0].message.content: {str(data)[:200]}") from None
        return Completion(content or "", choice.get("finish_reason"))

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._http.post(path, json=body)
        except httpx.TimeoutException as exc:
            raise EngineTimeout(self.engine, f"{self.settings.root}: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise EngineUnavailable(
                self.engine, f"{self.settings.root} unreachable: {exc or type(exc).__name__}"
            ) from exc
        if response.status_code >= 500:
            raise EngineUnavailable(
                self.engine, f"{self.settings.root} answered {response.status_code}: {_detail(response)}"
            )
        if response.status_code >= 400:
            raise EngineError(
                self.engine, f"{self.settings.root} refused the request ({response.status_code}): {_detail(response)}"
            )
        try:
            return response.json()
        except ValueError as exc:
            raise EngineError(self.engine, f"answer is not JSON: {response.text[:200]!r}") from exc

    async def aclose(self) -> None:
        await self._http.aclose()


def _detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message", err))[:300]
        return str(err)[:300]
    return str(data)[:300]
