"""Engine adapters, one module per engine; `build_engine` picks the class for a manifest's engine.

engine = build_engine("dots-ocr", EngineSettings(base_url="http://127.0.0.1:8102", served_name="dots-ocr"))
result = await engine.ocr(page, Task.layout)   # PageResult
"""

from __future__ import annotations

from typing import Any

from appliance.gateway.engines.base import Engine, EngineSettings
from appliance.gateway.engines.dots_ocr import DotsOcrEngine
from appliance.gateway.engines.paddleocr_vl import PaddleOcrVlEngine
from appliance.gateway.engines.qwen3_vl import Qwen3VlEngine

ENGINES: dict[str, type[Engine]] = {
    PaddleOcrVlEngine.kind: PaddleOcrVlEngine,
    DotsOcrEngine.kind: DotsOcrEngine,
    Qwen3VlEngine.kind: Qwen3VlEngine,
}


def build_engine(kind: str, settings: EngineSettings, **options: Any) -> Engine:
    """`kind` is the manifest's `engine` field; `options` go to the adapter (e.g. layout_model_dir)."""
    try:
        cls = ENGINES[kind]
    except KeyError:
        raise ValueError(f"unknown engine {kind!r}; known: {', '.join(sorted(ENGINES))}") from None
    return cls(settings, **options)


__all__ = ["ENGINES", "DotsOcrEngine", "Engine", "EngineSettings", "PaddleOcrVlEngine", "Qwen3VlEngine", "build_engine"]
