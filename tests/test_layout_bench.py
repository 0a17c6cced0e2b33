"""The layout benchmark compares like with like: PaddleX's serving config (bench/layout_bench.py) must
name the layout model directory, the vLLM server, the served name and the VL concurrency our gateway's
PaddleOCR pipeline is built with. Checked on the config PaddleOCR itself merges from our gateway's
constructor arguments (no model is loaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.gateway.engines_setup import build_engines
from appliance.manifest import Catalog
from appliance.runtime.served import served_models
from bench import layout_bench

pytest.importorskip("paddleocr")


def _merged_config_of_gateway(kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The PaddleX config `PaddleOCRVL(**kwargs)` builds its pipeline from (the pipeline itself not built)."""
    from paddleocr import PaddleOCRVL
    from paddleocr._pipelines.base import PaddleXPipelineWrapper

    monkeypatch.setattr(PaddleXPipelineWrapper, "_create_paddlex_pipeline", lambda self: None)
    return PaddleOCRVL(**kwargs)._merged_paddlex_config


def _pick(config: dict[str, Any]) -> dict[str, Any]:
    layout = config["SubModules"]["LayoutDetection"]
    vl = config["SubModules"]["VLRecognition"]["genai_config"]
    return {
        "pipeline_name": config["pipeline_name"],
        "use_doc_preprocessor": bool(config["use_doc_preprocessor"]),
        "use_layout_detection": config["use_layout_detection"],
        "layout model": (layout["model_name"], str(layout["model_dir"])),
        "vl backend": vl["backend"],
        "vl server": vl["server_url"],
        "vl name": vl["client_kwargs"]["model_name"],
        "vl concurrency": vl["max_concurrency"],
    }


def test_paddlex_serving_config_matches_the_gateways_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = Catalog(layout_bench.bench_manifests(tmp_path))
    served = served_models(catalog, catalog.profile(layout_bench.PROFILE))
    assert [s.name for s in served] == [layout_bench.MODEL]
    store = tmp_path / "store"
    layout = served[0].manifest.layout
    assert layout is not None and layout.subdir
    (store / served[0].name / layout.subdir).mkdir(parents=True)
    (store / served[0].name / layout.subdir / "inference.yml").write_text("Global: {model_name: PP-DocLayoutV2}\n")

    engine = build_engines(catalog, served, store)["paddleocr-vl"]
    ours = _pick(_merged_config_of_gateway(engine.pipeline_kwargs(), monkeypatch))
    theirs = _pick(layout_bench.paddlex_config_for(store, served[0]))

    assert theirs == ours
    assert theirs["layout model"] == ("PP-DocLayoutV2", str(store / served[0].name / "PP-DocLayoutV2"))
    assert theirs["vl server"] == f"{served[0].base_url}/v1"
    assert theirs["vl concurrency"] == layout_bench.MAX_NUM_SEQS


def test_both_sides_get_the_same_request() -> None:
    body = layout_bench.parsing_body(b"png", 32)
    assert body["maxNewTokens"] == 32 and body["visualize"] is False and body["fileType"] == 1
