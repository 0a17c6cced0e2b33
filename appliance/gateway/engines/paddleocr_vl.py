"""PaddleOCR-VL adapter: the official PaddleOCR pipeline, its VL model served by our vLLM server.

`PaddleOCRVL(vl_rec_backend="vllm-server", vl_rec_server_url=<our server>/v1, …)` — the pipeline
does layout detection (PP-DocLayoutV2/V3, a Paddle model run in this process) and sends each region
to vLLM with the task prompt (`OCR:`, `Table Recognition:`, `Formula Recognition:`,
`Chart Recognition:`); it converts OTSL tables to HTML itself. Without a layout model the pipeline is
built with `use_layout_detection=False` (and no orientation / unwarping models), and a page is one
region read with the prompt chosen by `prompt_label` — that is also how single-task requests
(table, formula, chart) run when a layout model is present.

Offline: PaddleX looks up hubs only for models it has no local directory for. Every model it would
need is either given by directory (layout) or switched off (orientation, unwarping), the VL model is
remote (`vllm-server`: an OpenAI client only, asked for `vl_rec_api_model_name`, so it never lists
/v1/models), and `PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK` skips the hub connectivity probe that
otherwise runs before the first download attempt. See `paddle_offline_env`.

The vLLM server must run with `--trust-request-mm-kwargs`: the pipeline sends per-request
`mm_processor_kwargs` (min/max pixels per region type), which vLLM ≥ 0.11 refuses otherwise.

The pipeline is synchronous: it is built once, lazily, under a lock, and called in a dedicated
thread pool of `max_concurrency` threads. One pipeline called from several threads is NOT safe as
PaddleX ships it: its layout predictor reuses one set of Paddle Inference input/output handles and
`run()` releases the GIL, so concurrent pages get layouts computed with another page's size —
silently (DESIGN §14; PaddleX's own server serialises whole pipeline calls for this). We serialise
only the layout model's calls (`_SerializedPredictor`): cropping and the VL requests of many pages
still run concurrently, the part that takes the time.

On a GPU (cuda profiles, appliance/runtime/layout.py) the layout model is its ONNX export run by
PaddleX's own `engine="onnxruntime"` on the CUDA provider, chosen for that sub-module alone through
the PaddleX pipeline config (`paddlex_config`): the VL model stays a client of our vLLM server.
ONNX Runtime's arena is capped (`gpu_mem_limit`) at the share the GPU plan reserved for it.

Truncation is not visible here: PaddleX keeps only `choices[0].message.content` of each region's
answer (paddlex/inference/models/doc_vlm/predictor.py `_doc_vlm_genai_collect_responses`), so a
region cut at `max_new_tokens` cannot be marked in the page's warnings as the other engines' are.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.errors import EngineError, EngineTimeout, EngineUnavailable
from appliance.gateway.documents import PageImage
from appliance.gateway.engines._text import table_block
from appliance.gateway.engines.base import Engine, EngineSettings
from appliance.gateway.protocol import Block, PageResult, Task

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

# pipeline_version → (PaddleX pipeline name, VL model name the pipeline asks the server for)
PIPELINES = {
    "v1": ("PaddleOCR-VL", "PaddleOCR-VL-0.9B"),
    "v1.5": ("PaddleOCR-VL-1.5", "PaddleOCR-VL-1.5-0.9B"),
    "v1.6": ("PaddleOCR-VL-1.6", "PaddleOCR-VL-1.6-0.9B"),
}
PROMPT_LABELS = {Task.text: "ocr", Task.table: "table", Task.formula: "formula", Task.chart: "chart"}
# The pipeline's block labels without layout are the prompt labels; with layout, PP-DocLayout's.
CATEGORY_BY_LABEL = {"ocr": "text", "paragraph_title": "section-header", "doc_title": "title"}


def paddle_offline_env(cache_home: Path | None = None) -> dict[str, str]:
    """Environment PaddleX needs to stay off the network (set before `paddlex` is imported)."""
    env = {"PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK": "True"}  # any non-empty value disables the hub probe
    if cache_home is not None:
        env["PADDLE_PDX_CACHE_HOME"] = str(cache_home)  # official_models/, fonts/, temp files
    return env


PipelineFactory = Callable[..., Any]


class PaddleOcrVlEngine(Engine):
    kind = "paddleocr-vl"

    def __init__(
        self,
        settings: EngineSettings,
        *,
        pipeline_version: str = "v1",
        layout_model_dir: Path | str | None = None,
        layout_model_name: str | None = None,
        layout_gpu_mem_limit: int | None = None,
        pipeline_factory: PipelineFactory | None = None,
    ) -> None:
        """`layout_gpu_mem_limit` set: `layout_model_dir` is the ONNX export, run on the GPU by ONNX
        Runtime with its arena capped at that many bytes."""
        super().__init__(settings)
        if pipeline_version not in PIPELINES:
            raise ValueError(f"pipeline_version {pipeline_version!r}: expected one of {', '.join(PIPELINES)}")
        self.pipeline_version = pipeline_version
        self.layout_model_dir = Path(layout_model_dir) if layout_model_dir else None
        if self.layout_model_dir is not None and not (self.layout_model_dir / "inference.yml").is_file():
            raise ValueError(f"layout model dir {self.layout_model_dir}: no inference.yml")
        self.layout_model_name = layout_model_name
        self.layout_gpu_mem_limit = layout_gpu_mem_limit
        self.layout_providers: list[str] = []  # ONNX Runtime's providers of the built layout session
        self._factory = pipeline_factory or _official_pipeline
        self._pipeline: Any = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(settings.max_concurrency, thread_name_prefix="paddleocr-vl")

    @property
    def has_layout(self) -> bool:
        return self.layout_model_dir is not None

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Exactly what `PaddleOCRVL(...)` is constructed with (tests assert on it)."""
        kwargs: dict[str, Any] = {
            "pipeline_version": self.pipeline_version,
            "vl_rec_backend": "vllm-server",
            "vl_rec_server_url": f"{self.settings.root}/v1",
            "vl_rec_api_model_name": self.settings.served_name,
            "vl_rec_max_concurrency": self.settings.max_concurrency,
            "use_doc_orientation_classify": False,
            "use_doc_unwarping": False,
        }
        if self.layout_model_dir is not None:
            kwargs["use_layout_detection"] = True
            kwargs["layout_detection_model_dir"] = str(self.layout_model_dir)
            if self.layout_model_name:
                kwargs["layout_detection_model_name"] = self.layout_model_name
        else:
            kwargs["use_layout_detection"] = False
        if self.layout_model_dir is not None and self.layout_gpu_mem_limit is not None:
            kwargs["paddlex_config"] = self.paddlex_config()
        return kwargs

    def layout_engine_config(self) -> dict[str, Any]:
        """The layout sub-module's PaddleX engine settings on the GPU (ONNX Runtime, CUDA provider).

        Bucketed by engine name: PaddleX merges the pipeline's own engine_config (PaddleOCR passes
        `{"paddle_static": …}`) into each sub-module's and refuses a mix of bucket and flat keys."""
        return {
            "engine": "onnxruntime",
            "engine_config": {
                "onnxruntime": {
                    "device_type": "gpu",
                    "device_id": 0,
                    "provider_options": {
                        "gpu_mem_limit": self.layout_gpu_mem_limit,
                        "arena_extend_strategy": "kSameAsRequested",  # grow by what is asked, not by doubling
                        "cudnn_conv_algo_search": "HEURISTIC",  # no exhaustive search's big trial workspaces
                    },
                }
            },
        }

    def paddlex_config(self) -> dict[str, Any]:
        """PaddleX's own pipeline config with the layout sub-module on ONNX Runtime (GPU); the
        constructor's other arguments are merged over it by PaddleOCR as usual."""
        from paddlex.inference.pipelines import load_pipeline_config

        config = load_pipeline_config(PIPELINES[self.pipeline_version][0])
        config["SubModules"]["LayoutDetection"].update(self.layout_engine_config())
        return config

    def pipeline(self) -> Any:
        """The pipeline, built on first use (thread-safe; construction makes no network call)."""
        if self._pipeline is None:
            with self._lock:
                if self._pipeline is None:
                    for key, value in paddle_offline_env().items():
                        os.environ.setdefault(key, value)
                    _check_flags_read()
                    if self.layout_gpu_mem_limit is not None:
                        _preload_cuda_libraries()
                    pipeline = self._factory(**self.pipeline_kwargs())
                    if self.has_layout:
                        guard_layout_model(pipeline)
                    if self.layout_gpu_mem_limit is not None:
                        self.layout_providers = layout_providers(pipeline)
                        if "CUDAExecutionProvider" not in self.layout_providers:
                            log.warning(
                                "the layout model was meant for the GPU but ONNX Runtime runs it on %s "
                                "(CUDA or cuDNN libraries not found?): ~0.6 s a page caps layout requests",
                                self.layout_providers or "no provider",
                            )
                    self._pipeline = pipeline
        return self._pipeline

    async def _read(self, page: PageImage, task: Task) -> PageResult:
        try:  # numpy comes with the `gateway` extra (paddleocr): a plain install serves the other engines
            import numpy as np
        except ModuleNotFoundError:
            hint = "needs the gateway extra: pip install 'ocr-appliance[gateway]'"
            raise EngineUnavailable(self.kind, hint) from None
        loop = asyncio.get_running_loop()
        bgr = np.ascontiguousarray(np.asarray(page.image)[:, :, ::-1])
        use_layout = task == Task.layout and self.has_layout
        predict_kwargs: dict[str, Any] = {
            "use_layout_detection": use_layout,
            "use_queues": False,  # one page per call: run inline, so upstream errors keep their type
        }
        if not use_layout:
            predict_kwargs["prompt_label"] = PROMPT_LABELS.get(task, "ocr")
        if self.settings.max_new_tokens is not None:
            predict_kwargs["max_new_tokens"] = self.settings.max_new_tokens
        warnings = []
        if task == Task.layout and not self.has_layout:
            warnings.append("no layout model configured: the page is read as one text region")
        raw = await loop.run_in_executor(self._pool, self._predict, bgr, predict_kwargs)
        markdown, blocks = convert_result(raw)
        return self._result(page, task, markdown, blocks, warnings)

    def _predict(self, bgr: np.ndarray, kwargs: dict[str, Any]) -> dict[str, Any]:
        try:
            results = self.pipeline().predict(bgr, **kwargs)
            if not results:
                raise EngineError(self.kind, "the pipeline returned no result for the page")
            result = results[0]
            return {
                "res": result.json["res"],
                "markdown": result._to_markdown(pretty=False)["markdown_texts"],  # as PaddleX serving does
            }
        except EngineError:
            raise
        except Exception as exc:
            raise _translate(self.kind, self.settings.root, exc) from exc

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            await asyncio.get_running_loop().run_in_executor(None, pipeline.close)


def _check_flags_read() -> None:
    """PaddleX reads its flags once, at import: if it was imported before the env was set, say so."""
    flags = sys.modules.get("paddlex.utils.flags")
    if flags is not None and not getattr(flags, "DISABLE_MODEL_SOURCE_CHECK", None):
        raise EngineError(
            "paddleocr-vl",
            "paddlex was imported before PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK was set: set it in the environment",
        )


class _SerializedPredictor:
    """A PaddleX predictor whose calls run one at a time; the results are gathered under the lock.

    PaddleX's predictors are generators: the Paddle handles are used while the caller iterates, so
    the whole iteration is what the lock must cover (`list(...)`, as the pipeline itself does).
    """

    def __init__(self, predictor: Any) -> None:
        self._predictor = predictor
        self._lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> list[Any]:
        with self._lock:
            return list(self._predictor(*args, **kwargs))

    def predict(self, *args: Any, **kwargs: Any) -> list[Any]:
        with self._lock:
            return list(self._predictor.predict(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:  # batch_sampler, close, … of the wrapped predictor
        return getattr(self._predictor, name)


def guard_layout_model(pipeline: Any) -> int:
    """Wrap the layout model of every PaddleX pipeline inside `pipeline`; return how many.

    `paddleocr.PaddleOCRVL` → `.paddlex_pipeline` (AutoParallel…) → `._pipeline` (one device) or
    `._pipelines` (one per device, each with its own predictor) → `.layout_det_model`. Finding none
    is an error: a PaddleX that moved it would otherwise silently lose the guard.
    """
    outer = getattr(pipeline, "paddlex_pipeline", pipeline)
    own = vars(outer)  # not getattr: AutoParallel's __getattr__ forwards to the inner pipeline
    inner = own.get("_pipelines") or ([own["_pipeline"]] if own.get("_pipeline") is not None else [outer])
    guarded = 0
    for each in inner:
        model = getattr(each, "layout_det_model", None)
        if model is None:
            continue
        if not isinstance(model, _SerializedPredictor):
            each.layout_det_model = _SerializedPredictor(model)
        guarded += 1
    if not guarded:
        raise EngineError("paddleocr-vl", "no layout_det_model in the PaddleX pipeline: cannot serialise its calls")
    return guarded


def _layout_models(pipeline: Any) -> list[Any]:
    outer = getattr(pipeline, "paddlex_pipeline", pipeline)
    own = vars(outer)
    inner = own.get("_pipelines") or ([own["_pipeline"]] if own.get("_pipeline") is not None else [outer])
    return [m for m in (getattr(each, "layout_det_model", None) for each in inner) if m is not None]


def layout_providers(pipeline: Any) -> list[str]:
    """ONNX Runtime's providers of the layout model's session (empty if it is no ONNX Runtime model)."""
    for model in _layout_models(pipeline):
        predictor = getattr(model, "_predictor", model)  # unwrap the guard
        session = getattr(getattr(predictor, "runner", None), "session", None)
        if session is not None:
            return list(session.get_providers())
    return []


def _preload_cuda_libraries() -> None:
    """onnxruntime-gpu's CUDA/cuDNN come as nvidia-* wheels in this venv (the layout-gpu extra): load
    them before the session is made, as ONNX Runtime's own `preload_dlls` does (>= 1.21)."""
    try:
        import onnxruntime

        preload = getattr(onnxruntime, "preload_dlls", None)
        if preload is not None:
            preload()
    except Exception as exc:  # the session then says which provider it got: logged by the caller
        log.warning("onnxruntime.preload_dlls failed: %s", exc)


def _official_pipeline(**kwargs: Any) -> Any:
    from paddleocr import PaddleOCRVL  # heavy (paddle): imported on first use only

    return PaddleOCRVL(**kwargs)


def convert_result(raw: dict[str, Any]) -> tuple[str, list[Block]]:
    """PaddleOCRVLResult (its `json["res"]` and Markdown) → our Markdown and blocks.

    `parsing_res_list` items: `block_label`, `block_content`, `block_bbox` ([x0, y0, x1, y1] in the
    input image's pixels: no orientation/unwarping runs, so the original page's), `block_order`.
    Tables arrive as HTML (PaddleX converted the OTSL) or, when that failed, as OTSL.
    """
    res = raw.get("res", {})
    blocks = []
    for item in res.get("parsing_res_list", []):
        label = str(item.get("block_label") or "text")
        category = CATEGORY_BY_LABEL.get(label, label)
        content = item.get("block_content") or ""
        bbox = item.get("block_bbox")
        bbox = [round(float(v)) for v in bbox] if isinstance(bbox, list | tuple) and len(bbox) == 4 else None
        if label == "table":
            blocks.append(table_block(content, bbox))
        else:
            blocks.append(Block(bbox=bbox, category=category, text=content))
    markdown = raw.get("markdown") or ""
    return markdown.strip(), blocks


def _translate(engine: str, root: str, exc: Exception) -> EngineError:
    """Errors from the pipeline's OpenAI client (or PaddleX's wrapping of them) → our typed errors."""
    import openai

    for err in _chain(exc):
        if isinstance(err, openai.APITimeoutError):
            return EngineTimeout(engine, f"{root}: request timed out")
        if isinstance(err, openai.APIConnectionError):
            return EngineUnavailable(engine, f"{root} unreachable: {err}")
        if isinstance(err, openai.InternalServerError):
            return EngineUnavailable(engine, f"{root} answered {err.status_code}: {err.message}")
        if isinstance(err, openai.APIStatusError):
            hint = ""
            if "mm_processor_kwargs" in str(err.message):  # vLLM >= 0.11 refuses them by default
                hint = (
                    " (run the vLLM server with --trust-request-mm-kwargs: the pipeline sends per-request pixel limits)"
                )
            return EngineError(engine, f"{root} refused the request ({err.status_code}): {err.message}{hint}")
    text = str(exc)
    if "Connection error" in text:
        return EngineUnavailable(engine, f"{root} unreachable: {text}")
    if "timed out" in text.lower():
        return EngineTimeout(engine, f"{root}: {text}")
    return EngineError(engine, f"PaddleOCR pipeline failed: {type(exc).__name__}: {text[:300]}")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen
