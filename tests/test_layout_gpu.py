"""PaddleOCR-VL's layout model on the GPU (cuda profiles): shipped, planned, wired into the PaddleX
pipeline for the layout sub-module alone, and reported by `/startupz` — with what the CPU caps when
the image cannot run it on the GPU. No GPU here: what runs on one is the ONNX Runtime session PaddleX
builds from the config checked below (README, "The layout model on the GPU")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from appliance.gateway.app import create_app
from appliance.gateway.engines_setup import build_engines
from appliance.manifest import Catalog
from appliance.runtime.layout import CUDA_CONTEXT_BYTES, layout_placement
from appliance.runtime.plan import plan_profile
from appliance.runtime.served import served_models
from tests.conftest import REPO

CATALOG = Catalog(REPO / "manifests")
ORT = {"onnxruntime-gpu": "1.31.1"}.get


def _onnx_store(root: Path, model: str = "pp-doclayoutv2-onnx") -> Path:
    (root / model).mkdir(parents=True)
    (root / model / "inference.onnx").write_bytes(b"onnx")
    (root / model / "inference.yml").write_text("Global: {model_name: PP-DocLayoutV2}\n")
    return root


def test_cuda_profiles_ship_and_plan_the_onnx_export() -> None:
    names = [m.name for m in CATALOG.profile_models("gpu-24gb")]
    assert "pp-doclayoutv2-onnx" in names
    assert not any(n.endswith("-onnx") for n in (m.name for m in CATALOG.profile_models("tiny-cpu")))
    plan = plan_profile(CATALOG, CATALOG.profile("gpu-24gb"))
    [layout] = [m for m in plan.models if m.kind == "layout"]
    onnx = CATALOG.model("pp-doclayoutv2-onnx").resources
    assert layout.name == "pp-doclayoutv2-onnx" and layout.need_bytes == onnx.weight_bytes + onnx.overhead_bytes
    vllm = [m for m in plan.models if m.kind == "vllm"]
    assert sum(m.fraction for m in vllm) * plan.total_bytes + layout.need_bytes <= plan.safe_fraction * plan.total_bytes
    with pytest.raises(StopIteration):
        plan.fraction("pp-doclayoutv2-onnx")  # no vLLM flag is rendered for it


def test_placement_on_a_cuda_profile(tmp_path: Path) -> None:
    profile = CATALOG.profile("gpu-24gb")
    root = _onnx_store(tmp_path / "models")
    gpu = layout_placement(CATALOG, profile, root, ORT)
    assert gpu is not None and gpu.device == "gpu" and gpu.onnx and gpu.model_dir == root / "pp-doclayoutv2-onnx"
    onnx = CATALOG.model("pp-doclayoutv2-onnx").resources
    assert gpu.gpu_mem_limit == onnx.weight_bytes + onnx.overhead_bytes - CUDA_CONTEXT_BYTES
    assert gpu.cap_pages_per_second == pytest.approx(20.0)
    cpu = layout_placement(CATALOG, profile, root, lambda d: None)
    assert cpu is not None and cpu.device == "cpu" and cpu.wanted_gpu
    assert cpu.model_dir == root / "paddleocr-vl" / "PP-DocLayoutV2"  # the Paddle model, as before
    assert "near 1.7 pages/s whatever the GPU" in cpu.summary()


def test_the_gpu_engine_runs_only_the_layout_sub_module_on_onnx_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("paddleocr")
    from paddleocr import PaddleOCRVL
    from paddleocr._pipelines.base import PaddleXPipelineWrapper
    from paddlex.inference.pipelines.base import BasePipeline

    root = _onnx_store(tmp_path / "models")
    profile = CATALOG.profile("gpu-24gb")
    place = layout_placement(CATALOG, profile, root, ORT)
    engine = build_engines(CATALOG, served_models(CATALOG, profile), root, place)["paddleocr-vl"]
    kwargs = engine.pipeline_kwargs()
    assert kwargs["layout_detection_model_dir"] == str(root / "pp-doclayoutv2-onnx")

    # What PaddleOCR merges from these arguments (the pipeline itself not built: no GPU here)
    monkeypatch.setattr(PaddleXPipelineWrapper, "_create_paddlex_pipeline", lambda self: None)
    config: dict[str, Any] = PaddleOCRVL(**kwargs)._merged_paddlex_config
    layout, vl = config["SubModules"]["LayoutDetection"], config["SubModules"]["VLRecognition"]
    assert layout["model_dir"] == str(root / "pp-doclayoutv2-onnx") and layout["model_name"] == "PP-DocLayoutV2"
    assert layout["engine"] == "onnxruntime"
    ort = layout["engine_config"]["onnxruntime"]
    assert ort["device_type"] == "gpu" and ort["provider_options"]["gpu_mem_limit"] == place.gpu_mem_limit  # type: ignore[union-attr]
    assert vl["genai_config"]["backend"] == "vllm-server" and "engine" not in vl
    # How PaddleX picks each sub-module's engine: ONNX Runtime for layout, the vLLM client for VL
    assert BasePipeline._resolve_child_engine(layout, None, allow_genai=True) == ("onnxruntime", False)
    assert BasePipeline._resolve_child_engine(vl, None, allow_genai=True) == (None, True)
    # What PaddleX's create_model makes of them next to the pipeline's own engine_config (PaddleOCR's
    # `{"paddle_static": …}`): ONNX Runtime's settings, accepted by its runner as they are
    from paddleocr._common_args import parse_common_args, prepare_common_init_args
    from paddlex.inference.models import _maybe_flatten_bucketed_engine_config
    from paddlex.inference.models.runners.onnxruntime_runner import ONNXRuntimeRunnerConfig

    inherited = prepare_common_init_args(None, parse_common_args({"device": "cpu"}, default_enable_hpi=None))
    merged = dict(inherited["engine_config"]) | layout["engine_config"]
    flat = _maybe_flatten_bucketed_engine_config("onnxruntime", merged)
    assert ONNXRuntimeRunnerConfig.model_validate(flat).device_type == "gpu"

    cpu_engine = build_engines(CATALOG, served_models(CATALOG, CATALOG.profile("gpu-24gb")), root)["paddleocr-vl"]
    assert "paddlex_config" not in cpu_engine.pipeline_kwargs()  # no placement: the Paddle model, as before


def test_startupz_says_where_the_layout_model_runs(tmp_path: Path) -> None:
    """A cuda profile whose image cannot run the layout model on the GPU (this venv has no
    onnxruntime-gpu): /startupz says so and what that caps; the tiny CPU profile says CPU."""
    root = _onnx_store(tmp_path / "models")
    with TestClient(create_app(CATALOG, "gpu-24gb", tmp_path / "run", models_root=root, api_keys=["k"])) as client:
        response = client.get("/startupz")
    assert response.status_code == 503  # nothing started: the layout line never decides the probe
    layout = response.json()["layout"]
    if layout["device"] == "gpu":
        pytest.skip("this venv has onnxruntime-gpu")
    assert layout["wanted_gpu"] and layout["cap_pages_per_second"] == pytest.approx(1.67)
    assert "onnxruntime-gpu is not installed" in layout["detail"] and "whatever the GPU" in layout["summary"]
    with TestClient(create_app(CATALOG, "tiny-cpu", tmp_path / "run2", models_root=root, api_keys=["k"])) as client:
        tiny = client.get("/startupz").json()["layout"]
    assert tiny["device"] == "cpu" and not tiny["wanted_gpu"] and tiny["model"] == "tiny-paddleocr-vl"


def test_the_image_of_a_cuda_profile_gets_onnx_runtime_for_the_gpu() -> None:
    from appliance.image.context import IMAGE_EXTRAS, LAYOUT_GPU_EXTRA, image_extras

    assert image_extras(CATALOG, CATALOG.profile("gpu-24gb")) == (*IMAGE_EXTRAS, LAYOUT_GPU_EXTRA)
    assert image_extras(CATALOG, CATALOG.profile("tiny-cpu")) == IMAGE_EXTRAS  # the CPU build only
    assert image_extras(CATALOG, CATALOG.profile("gpu-12gb")) == IMAGE_EXTRAS  # no PaddleOCR-VL
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("onnxruntime-gpu") for r in extras[LAYOUT_GPU_EXTRA])
