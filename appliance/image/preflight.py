"""`appliance image preflight`: inside a built image, with no network, prove every model will boot.

Two interpreters, as at run time: the base's own vLLM Python resolves, per model, what vLLM resolves
at start-up (`preflight_vllm.py`, run by path: that interpreter cannot import this package); the
appliance venv constructs the PaddleOCR pipeline exactly as the gateway does and loads the gateway's
native libraries. No GPU is needed. `run_in_image` runs it in a container with `--network none`, as
the last step of `appliance image build`; any failure names model, check and error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from appliance.errors import ImageError
from appliance.manifest import Catalog, Profile
from appliance.runtime.served import served_models
from appliance.runtime.vllm_args import ENTRYPOINT, MODELS_ROOT, vllm_args

VLLM_SCRIPT = Path(__file__).with_name("preflight_vllm.py")
PROMPT_TEXT = "Read all the text in the image."
# The prompt each engine's adapter expects vLLM to build from one image + text user turn (pieces in
# order). A server that silently falls back to another template renders something else.
PROMPT_FORMS: dict[str, list[str]] = {
    "paddleocr-vl": [
        "<|begin_of_sentence|>User: ",
        f"<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>{PROMPT_TEXT}\n",
        "Assistant:",
    ],
    "dots-ocr": ["<|user|>", f"<|img|><|imgpad|><|endofimg|>\n{PROMPT_TEXT}", "<|endofuser|><|assistant|>"],
    "qwen3-vl": [
        "<|im_start|>user\n",
        f"<|vision_start|><|image_pad|><|vision_end|>{PROMPT_TEXT}<|im_end|>\n",
        "<|im_start|>assistant\n",
    ],
}
# Modules of the gateway venv that load native libraries at import (opencv needs libGL.so.1).
GATEWAY_NATIVE = ("cv2", "paddle")
VLLM_TIMEOUT = 900.0


@dataclass(frozen=True)
class Finding:
    model: str
    check: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.model}: {self.check}: {self.detail}"


def model_specs(catalog: Catalog, profile: Profile, models_root: PurePosixPath = MODELS_ROOT) -> list[dict[str, Any]]:
    """What the vLLM side checks per served model: the launcher's own command line, among others."""
    specs = []
    for served in served_models(catalog, profile):
        manifest = served.manifest
        specs.append(
            {
                "name": manifest.name,
                "engine": manifest.engine,
                "model_dir": str(models_root / manifest.name),
                "entrypoint": ENTRYPOINT[1],
                "argv": vllm_args(manifest, profile, served.entry, models_root=models_root),
                "python_packages": list(manifest.python_packages),
                "prompt_form": PROMPT_FORMS[manifest.engine],
                "prompt_text": PROMPT_TEXT,
            }
        )
    return specs


def check_vllm(python: str, specs: list[dict[str, Any]], env: dict[str, str] | None = None) -> list[Finding]:
    """Run preflight_vllm.py with vLLM's interpreter over `specs` (one process: vLLM imports once)."""
    try:
        proc = subprocess.run(
            [python, str(VLLM_SCRIPT)],
            input=json.dumps({"models": specs}),
            capture_output=True,
            text=True,
            timeout=VLLM_TIMEOUT,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [Finding("vllm", "interpreter", False, f"{python}: {exc}")]
    lines = proc.stdout.strip().splitlines()
    try:
        raw = json.loads(lines[-1]) if lines else None
    except ValueError:
        raw = None
    if proc.returncode != 0 or not isinstance(raw, list):
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])
        return [Finding("vllm", "interpreter", False, f"{python} exit {proc.returncode}: {tail}")]
    return [Finding(f["model"], f["check"], bool(f["ok"]), str(f["detail"])) for f in raw]


def check_pipeline(catalog: Catalog, profile: Profile, models_root: Path) -> list[Finding]:
    """Construct every PaddleOCR pipeline the gateway would, with the gateway's own code (layout dir
    included); construction makes no network call (DESIGN §9)."""
    from appliance.gateway.engines_setup import build_engines

    served = [s for s in served_models(catalog, profile) if s.engine == "paddleocr-vl"]
    findings = []
    for model in served:
        try:
            engine: Any = build_engines(catalog, [model], models_root)["paddleocr-vl"]
            engine.pipeline()
            layout = engine.pipeline_kwargs().get("layout_detection_model_dir", "no layout model")
            findings.append(Finding(model.name, "paddleocr pipeline", True, f"built ({layout})"))
        except Exception as exc:
            findings.append(Finding(model.name, "paddleocr pipeline", False, f"{type(exc).__name__}: {exc}"))
    return findings


def check_native(python: str = sys.executable, env: dict[str, str] | None = None) -> list[Finding]:
    """Import the gateway venv's native-library modules in a fresh interpreter (a failed dlopen is an
    ImportError naming the library, e.g. libGL.so.1)."""
    findings = []
    for module in GATEWAY_NATIVE:
        proc = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True, env=env, check=False)
        detail = (proc.stderr.strip().splitlines() or [""])[-1] if proc.returncode else "loaded"
        findings.append(Finding("gateway", f"import {module}", proc.returncode == 0, detail))
    return findings


def preflight(
    catalog: Catalog, profile: Profile, vllm_python: str, models_root: Path = Path(MODELS_ROOT)
) -> list[Finding]:
    from concurrent.futures import ThreadPoolExecutor

    specs = model_specs(catalog, profile, PurePosixPath(models_root))
    # The vLLM side is a subprocess: run the gateway-side checks meanwhile.
    with ThreadPoolExecutor(1) as pool:
        vllm_side = pool.submit(check_vllm, vllm_python, specs)
        gateway_side = check_native() + check_pipeline(catalog, profile, models_root)
        return vllm_side.result() + gateway_side


def run_in_image(ref: str, builder: str, profile: str) -> str:
    """Run `appliance image preflight --inside` in the built image with no network; its report, or
    ImageError naming the failures."""
    from appliance.image.tools import PODMAN_RUN

    # podman: no health timer (it would ask systemd, which this host class does not run).
    engine = ["docker", "run"] if builder == "docker" else [*PODMAN_RUN, "--health-cmd", "none"]
    cmd = [
        *engine, "--rm", "--network", "none", "--entrypoint", "/opt/appliance/venv/bin/appliance",
        ref, "image", "preflight", "--inside", "--profile", profile,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=os.environ.copy())
    if proc.returncode != 0:
        failed = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
        detail = "\n".join(failed) or "\n".join(proc.stderr.strip().splitlines()[-10:])
        raise ImageError(f"preflight of {ref} failed:\n{detail}")
    return proc.stdout
