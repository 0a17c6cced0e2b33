"""GPU plan and the vLLM command line of every served model in every shipped profile."""

from __future__ import annotations

import json
import os

import pytest

from appliance.manifest import Catalog
from appliance.runtime.plan import PlanError, plan_profile
from appliance.runtime.vllm_args import vllm_args
from tests.conftest import REPO, ManifestDir

GOLDEN = REPO / "tests" / "golden" / "vllm_args.json"
CATALOG = Catalog(REPO / "manifests")


def render_all() -> dict[str, dict[str, list[str]]]:
    rendered: dict[str, dict[str, list[str]]] = {}
    for name in CATALOG.profile_names():
        profile = CATALOG.profile(name)
        plan = plan_profile(CATALOG, profile)
        rendered[name] = {
            e.model: vllm_args(CATALOG.model(e.model), profile, e, plan.fraction(e.model)) for e in profile.models
        }
    return rendered


def test_rendered_command_lines_are_pinned() -> None:
    """Any change to a rendered vLLM command line must be deliberate: regenerate with
    APPLIANCE_UPDATE_GOLDEN=1 and review the diff."""
    rendered = render_all()
    if os.environ.get("APPLIANCE_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(rendered, indent=1) + "\n")
    assert json.loads(GOLDEN.read_text()) == rendered


def _flag(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


@pytest.mark.parametrize("profile", CATALOG.profile_names())
def test_every_engine_gets_its_flags(profile: str) -> None:
    prof = CATALOG.profile(profile)
    ports = set()
    for model, args in render_all()[profile].items():
        manifest = CATALOG.model(model)
        assert _flag(args, "--model") == f"/models/{model}"  # absolute local path, never a hub id
        assert _flag(args, "--served-model-name") == manifest.serve.served_model_name  # type: ignore[union-attr]
        assert _flag(args, "--host") == "127.0.0.1" and _flag(args, "--mm-processor-cache-gb") == "0"
        assert json.loads(_flag(args, "--limit-mm-per-prompt") or "{}")["image"] == 1
        ports.add(_flag(args, "--port"))
        if manifest.engine == "dots-ocr":
            assert "--trust-remote-code" in args and _flag(args, "--chat-template-content-format") == "string"
        if manifest.engine == "qwen3-vl":
            assert _flag(args, "--generation-config") == "vllm"
        if manifest.engine == "paddleocr-vl":
            assert "--no-enable-prefix-caching" in args and _flag(args, "--max-num-batched-tokens")
            assert "--trust-request-mm-kwargs" in args  # the PaddleOCR pipeline sends pixel limits
        if prof.target.device == "cuda":
            assert 0 < float(_flag(args, "--gpu-memory-utilization") or 0) < 1
        else:
            assert "--gpu-memory-utilization" not in args
    assert len(ports) == len(prof.models)


def test_real_models_specifics() -> None:
    rendered = render_all()
    paddle = rendered["gpu-24gb"]["paddleocr-vl"]
    assert _flag(paddle, "--served-model-name") == "PaddleOCR-VL-0.9B"
    # Native transformers 5 classes, and the checkpoint's own lm_head (manifests/facts/paddleocr-vl.yaml).
    assert "--trust-remote-code" not in paddle
    assert json.loads(_flag(paddle, "--hf-overrides") or "{}") == {"tie_word_embeddings": False}
    dots = rendered["gpu-12gb"]["dots-ocr"]
    assert json.loads(_flag(dots, "--mm-processor-kwargs") or "{}") == {"max_pixels": 5017600}


@pytest.mark.parametrize("profile", [p for p in CATALOG.profile_names() if CATALOG.profile(p).target.device == "cuda"])
def test_fractions_fit_the_safe_total(profile: str) -> None:
    plan = plan_profile(CATALOG, CATALOG.profile(profile))
    assert sum(m.fraction for m in plan.models) <= plan.safe_fraction
    for m in plan.models:  # every server gets at least what it needs
        assert m.fraction * plan.total_bytes >= m.need_bytes


def test_field_case_hand_tuning_is_refused(manifests: ManifestDir) -> None:
    """dots.ocr + Qwen3-VL-2B (bf16) with generous contexts cannot share 12 GB: the planner says so with numbers."""
    for name in ("dots-ocr", "qwen3-vl-2b"):
        (manifests.root / "models" / f"{name}.yaml").write_text(
            (REPO / "manifests/models" / f"{name}.yaml").read_text()
        )
    manifests.profile(
        "field",
        """
        target: {device: cuda, gpu_memory_gib: 12}
        base_image: x
        models:
          - {model: dots-ocr, max_model_len: 16384, max_num_seqs: 8}
          - {model: qwen3-vl-2b, max_model_len: 16384, max_num_seqs: 8}
        """,
    )
    catalog = manifests.catalog()
    with pytest.raises(PlanError) as err:
        plan_profile(catalog, catalog.profile("field"))
    assert "dots-ocr" in str(err.value) and "10.80 GiB is the safe total" in str(err.value)
    plan = plan_profile(catalog, catalog.profile("field"), gpu_memory_gib=80)  # fits a bigger GPU
    assert sum(m.fraction for m in plan.models) <= 0.9
