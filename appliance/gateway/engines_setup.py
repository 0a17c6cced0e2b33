"""Build the engine adapters for a profile: one per engine kind (the profile's first model of it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from appliance.gateway.engines import Engine, EngineSettings, build_engine
from appliance.manifest import Catalog, ModelManifest
from appliance.runtime.layout import LayoutPlacement
from appliance.runtime.served import Served


def _processor_pixels(manifest: ModelManifest, model_dir: Path) -> dict[str, int]:
    """The pixel window the *server* resizes into: the manifest's mm_processor_kwargs, else the model's
    own preprocessor config. dots.ocr boxes are only right if the adapter resizes the same way."""
    limits: dict[str, int] = {}
    try:
        config = json.loads((model_dir / "preprocessor_config.json").read_text())
    except (OSError, ValueError):
        config = {}
    size = config.get("size") or {}
    if value := config.get("min_pixels") or size.get("shortest_edge"):
        limits["min_pixels"] = int(value)
    if value := config.get("max_pixels") or size.get("longest_edge"):
        limits["max_pixels"] = int(value)
    overrides = (manifest.serve.mm_processor_kwargs if manifest.serve else None) or {}
    limits |= {k: int(v) for k, v in overrides.items() if k in ("min_pixels", "max_pixels")}
    return limits


def engine_options(
    catalog: Catalog, served: Served, models_root: Path, placement: LayoutPlacement | None = None
) -> dict[str, Any]:
    """The adapter's options; `placement` (appliance.runtime.layout.layout_placement) puts a PaddleOCR-VL
    model's layout model on the GPU when it says ONNX Runtime for this model."""
    manifest = served.manifest
    model_dir = models_root / manifest.name
    if manifest.engine == "dots-ocr":
        return _processor_pixels(manifest, model_dir)
    if manifest.engine == "paddleocr-vl" and manifest.layout is not None:
        layout = manifest.layout
        where = model_dir / layout.subdir if layout.subdir else models_root / (layout.model or "")
        options: dict[str, Any] = {"pipeline_version": layout.pipeline_version, "layout_model_name": layout.model_name}
        if placement is not None and placement.model == manifest.name and placement.onnx:
            options |= {"layout_model_dir": placement.model_dir, "layout_gpu_mem_limit": placement.gpu_mem_limit}
        elif (where / "inference.yml").is_file():
            options["layout_model_dir"] = where
        return options
    return {}


def build_engines(
    catalog: Catalog, served: list[Served], models_root: Path, layout: LayoutPlacement | None = None
) -> dict[str, Engine]:
    engines: dict[str, Engine] = {}
    for model in served:
        if model.engine in engines:
            continue  # the first model of a kind serves /v1/ocr; the others stay reachable by name
        settings = EngineSettings(
            base_url=model.base_url,
            served_name=model.served_name,
            max_concurrency=model.entry.max_num_seqs,
            max_new_tokens=model.entry.output_tokens,
        )
        options = engine_options(catalog, model, models_root, layout)
        engines[model.engine] = build_engine(model.engine, settings, **options)
    return engines
