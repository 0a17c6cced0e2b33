"""`appliance image preflight`: its checks against good and deliberately broken tiny repos.

The vLLM side runs once for every case (one interpreter, vLLM imported once: ~1-2 min on 2 cores)
with the host's vLLM venv (APPLIANCE_VLLM_PYTHON, as in tests/test_tiny_models.py); each test reads
its case from that one report. The image-level run happens in `appliance image build` (make
offline-image), not here.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path, PurePosixPath

import pytest

from appliance.image.preflight import Finding, check_native, check_pipeline, check_vllm, model_specs
from appliance.manifest import Catalog
from appliance.testing.hub import TINY_PROFILE
from appliance.testing.stack import vllm_python
from appliance.testing.tiny import generate_all
from tests.conftest import REPO

GOOD = ("tiny-paddleocr-vl", "tiny-dots-ocr", "tiny-qwen3-vl")
CHECKS = (
    "entrypoint", "flags", "packages", "architecture", "remote code", "config",
    "tokenizer", "processor", "chat template", "prompt",
)  # fmt: skip


def _broken(root: Path, specs: dict[str, dict], name: str, like: str) -> tuple[Path, dict]:
    """A copy of tiny repo `like` under another name, and its spec pointing there."""
    shutil.copytree(root / like, root / name)
    spec = json.loads(json.dumps(specs[like]))
    spec["name"] = name
    spec["model_dir"] = str(root / name)
    spec["argv"][spec["argv"].index("--model") + 1] = str(root / name)
    return root / name, spec


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Finding]]:
    root = tmp_path_factory.mktemp("preflight")
    generate_all(root)  # tiny-<arch>: the tiny manifests' names
    catalog = Catalog(REPO / "manifests")
    specs = {s["name"]: s for s in model_specs(catalog, catalog.profile(TINY_PROFILE), PurePosixPath(str(root)))}
    cases = [specs[name] for name in GOOD]

    repo, spec = _broken(root, specs, "remote-raises", "tiny-dots-ocr")
    (repo / "configuration_dots.py").write_text(
        (repo / "configuration_dots.py").read_text() + '\nraise RuntimeError("remote code broken at import")\n'
    )
    cases.append(spec)

    repo, spec = _broken(root, specs, "no-processor-file", "tiny-qwen3-vl")
    (repo / "preprocessor_config.json").unlink()
    cases.append(spec)

    repo, spec = _broken(root, specs, "unknown-arch", "tiny-qwen3-vl")
    config = json.loads((repo / "config.json").read_text())
    config["architectures"] = ["NoSuchVisionModelForConditionalGeneration"]
    (repo / "config.json").write_text(json.dumps(config))
    cases.append(spec)

    _, spec = _broken(root, specs, "rejected-flag", "tiny-paddleocr-vl")
    spec["argv"] += ["--no-such-flag-in-this-vllm", "1"]
    cases.append(spec)

    findings = check_vllm(vllm_python(), cases)
    assert not any(f.check == "interpreter" for f in findings), findings
    by_model: dict[str, dict[str, Finding]] = {}
    for f in findings:
        by_model.setdefault(f.model, {})[f.check] = f
    return by_model


@pytest.mark.slow
@pytest.mark.parametrize("model", GOOD)
def test_the_tiny_models_pass_every_check(model: str, report: dict[str, dict[str, Finding]]) -> None:
    checks = report[model]
    assert tuple(checks) == CHECKS
    assert all(f.ok for f in checks.values()), [f.line() for f in checks.values() if not f.ok]
    assert "the processor's" in checks["chat template"].detail  # not a fallback


@pytest.mark.slow
def test_remote_code_that_raises_at_import(report: dict[str, dict[str, Finding]]) -> None:
    failed = report["remote-raises"]["remote code"]
    assert not failed.ok and "remote code broken at import" in failed.detail
    assert "configuration_dots" in failed.detail  # names the module


@pytest.mark.slow
def test_missing_processor_file(report: dict[str, dict[str, Finding]]) -> None:
    checks = report["no-processor-file"]
    assert checks["config"].ok and not checks["processor"].ok
    # vLLM itself would swallow this and render with the tokenizer's template: caught, not silent.
    assert not checks["chat template"].ok and "did not load" in checks["chat template"].detail


@pytest.mark.slow
def test_architecture_this_vllm_does_not_know(report: dict[str, dict[str, Finding]]) -> None:
    failed = report["unknown-arch"]["architecture"]
    assert not failed.ok and "NoSuchVisionModelForConditionalGeneration" in failed.detail


@pytest.mark.slow
def test_flag_this_vllm_rejects(report: dict[str, dict[str, Finding]]) -> None:
    failed = report["rejected-flag"]["flags"]
    assert not failed.ok and "--no-such-flag-in-this-vllm" in failed.detail


def test_gateway_venv_whose_opencv_cannot_load_its_library(tmp_path: Path) -> None:
    # An opencv whose native library is missing fails at import with the dlopen error, as the
    # real cv2 does without libGL.so.1 ("cannot open shared object file").
    (tmp_path / "cv2").mkdir()
    (tmp_path / "cv2" / "__init__.py").write_text('import ctypes\nctypes.CDLL("libGL-not-on-this-host.so.1")\n')
    broken = {f.check: f for f in check_native(sys.executable, env={"PYTHONPATH": str(tmp_path)})}
    assert not broken["import cv2"].ok and "cannot open shared object file" in broken["import cv2"].detail
    good = {f.check: f for f in check_native(sys.executable)}
    assert good["import cv2"].ok and good["import paddle"].ok


@pytest.mark.slow
def test_pipeline_built_as_the_gateway_builds_it(tmp_path: Path) -> None:
    generate_all(tmp_path)
    catalog = Catalog(REPO / "manifests")
    findings = check_pipeline(catalog, catalog.profile(TINY_PROFILE), tmp_path)
    assert [(f.model, f.check, f.ok) for f in findings] == [("tiny-paddleocr-vl", "paddleocr pipeline", True)]
    assert findings[0].detail == f"built ({tmp_path / 'tiny-paddleocr-vl' / 'PP-DocLayoutV2'})"  # with its layout model


def test_build_step_runs_it_offline_in_the_image_and_stops_on_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from appliance.errors import ImageError
    from appliance.image import preflight

    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        out = "ok   tiny-qwen3-vl: flags: 22 arguments accepted\nFAIL tiny-dots-ocr: remote code: boom\n"
        return subprocess.CompletedProcess(cmd, 1, out, "")

    monkeypatch.setattr(preflight.subprocess, "run", fake_run)
    with pytest.raises(ImageError, match="tiny-dots-ocr: remote code: boom") as failed:
        preflight.run_in_image("localhost/ocr-appliance:tiny-cpu", "buildah", TINY_PROFILE)
    assert "tiny-qwen3-vl" not in str(failed.value)  # only what failed
    cmd = seen[0]
    assert cmd[:2] == ["podman", "--runtime"] and cmd[cmd.index("--network") + 1] == "none"
    assert cmd[-6:] == ["localhost/ocr-appliance:tiny-cpu", "image", "preflight", "--inside", "--profile", TINY_PROFILE]
    with pytest.raises(ImageError):
        preflight.run_in_image("ref", "docker", TINY_PROFILE)
    assert seen[1][:2] == ["docker", "run"]
