"""Where PaddleOCR-VL's layout model runs, and the pages/s that caps (`appliance doctor`, `/startupz`).

The layout model (PP-DocLayoutV2/V3) runs in the gateway's process, once per page and one page at a
time (its calls are serialised: appliance/gateway/engines/paddleocr_vl.py), so its time per page
caps every request with layout on, whatever vLLM does. Public figures for PP-DocLayoutV2: ~0.6 s a
page on a CPU, ~0.05 s on a GPU — on the CPU that is ~1.7 pages/s at best, about the 1.62 pages/s the
PaddleOCR-VL paper reports for the whole pipeline on one A100: the CPU would be the bottleneck.

On a cuda profile the gateway runs it on the GPU through PaddleX's own `engine="onnxruntime"` with
the model's ONNX export (`layout.gpu_model`, a model layer of its own) when the appliance venv has
`onnxruntime-gpu` (PyPI; the image's `layout-gpu` extra). Chosen over Paddle's GPU build, whose 3.x
wheels are only on Paddle's own package index (PyPI's newest `paddlepaddle-gpu` is 2.6.2, too old for
PaddleX 3), which would swap the whole `paddle` package; PaddleX's own HPI table also prefers ONNX
Runtime for PP-DocLayoutV2 on CUDA 12. A venv with `paddlepaddle-gpu` installed by hand works too
(PaddleX then puts the Paddle model on gpu:0 by itself). Anything else: the CPU, and the doctor and
`/startupz` say what that caps.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.manifest import Catalog, ModelManifest, Profile

# Public figures (PaddleX model list, PP-DocLayoutV2): seconds a page on a CPU / a GPU.
CPU_SECONDS = 0.6
GPU_SECONDS = 0.05
PAPER_PAGES_PER_SECOND = 1.62  # PaddleOCR-VL paper: end-to-end pages/s on one A100
ONNX_FILE = "inference.onnx"
# ONNX Runtime's CUDA context (lazy module loading) lies outside its arena: the arena gets the rest of
# the share the GPU plan reserves for the layout model (its manifest's weights + overhead).
CUDA_CONTEXT_BYTES = 400_000_000
ORT_GPU = "onnxruntime-gpu"
PADDLE_GPU = "paddlepaddle-gpu"

Installed = Callable[[str], str | None]  # distribution name -> version, None if not installed


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution in this interpreter (no import: paddle takes seconds)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class LayoutPlacement:
    model: str  # the PaddleOCR-VL model whose pipeline runs it
    layout: str  # PP-DocLayoutV2 / PP-DocLayoutV3
    device: str  # "gpu" or "cpu"
    runtime: str  # what runs it
    model_dir: Path  # the directory the pipeline loads it from
    onnx: bool  # ONNX Runtime (PaddleX engine "onnxruntime") rather than Paddle Inference
    wanted_gpu: bool  # a cuda profile: the CPU there is a shortfall
    detail: str = ""
    gpu_mem_limit: int | None = None  # ONNX Runtime's arena cap on the GPU (bytes)

    @property
    def seconds_per_page(self) -> float:
        return GPU_SECONDS if self.device == "gpu" else CPU_SECONDS

    @property
    def cap_pages_per_second(self) -> float:
        return 1 / self.seconds_per_page

    def summary(self) -> str:
        where = f"{self.device.upper()} ({self.runtime})"
        pace = f"~{self.seconds_per_page} s a page"
        cap = f"{pace} caps requests with layout on near {self.cap_pages_per_second:.1f} pages/s"
        if self.device == "gpu":
            return f"{where}: {cap}"
        if not self.wanted_gpu:
            return f"{where}, a CPU profile: {cap}"
        return (
            f"{where}: {self.detail}; {cap} whatever the GPU (the PaddleOCR-VL paper: "
            f"{PAPER_PAGES_PER_SECOND} pages/s on one A100; ~{GPU_SECONDS} s a page on the GPU)"
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model_dir"] = str(self.model_dir)
        return data | {
            "seconds_per_page": self.seconds_per_page,
            "cap_pages_per_second": round(self.cap_pages_per_second, 2),
            "summary": self.summary(),
        }


def _first_layout_model(catalog: Catalog, profile: Profile) -> ModelManifest | None:
    """The PaddleOCR-VL model the gateway builds its pipeline for (the profile's first; engines_setup)."""
    for entry in profile.models:
        manifest = catalog.model(entry.model)
        if manifest.engine == "paddleocr-vl" and manifest.serve is not None:
            return manifest if manifest.layout is not None else None
    return None


def layout_placement(
    catalog: Catalog, profile: Profile, models_root: Path, installed: Installed = installed_version
) -> LayoutPlacement | None:
    """Where the profile's layout model runs in this interpreter's gateway; None without one."""
    manifest = _first_layout_model(catalog, profile)
    if manifest is None or manifest.layout is None:
        return None
    layout = manifest.layout
    paddle_dir = models_root / manifest.name / layout.subdir if layout.subdir else models_root / (layout.model or "")
    place = {"model": manifest.name, "layout": layout.model_name, "model_dir": paddle_dir}
    if profile.target.device == "cpu":
        return LayoutPlacement(**place, device="cpu", runtime="paddle, CPU", onnx=False, wanted_gpu=False)
    onnx_dir = models_root / layout.gpu_model if layout.gpu_model else None
    ort = installed(ORT_GPU)
    if layout.gpu_model and onnx_dir is not None and (onnx_dir / ONNX_FILE).is_file() and ort:
        runtime = f"ONNX Runtime {ort}, CUDAExecutionProvider, {layout.gpu_model}"
        res = catalog.model(layout.gpu_model).resources
        limit = max(res.weight_bytes + res.overhead_bytes - CUDA_CONTEXT_BYTES, res.weight_bytes)
        return LayoutPlacement(**place | {"model_dir": onnx_dir}, device="gpu", runtime=runtime, onnx=True,
                               wanted_gpu=True, gpu_mem_limit=limit)  # fmt: skip
    if paddle_gpu := installed(PADDLE_GPU):
        return LayoutPlacement(**place, device="gpu", runtime=f"paddlepaddle-gpu {paddle_gpu}", onnx=False,
                               wanted_gpu=True)  # fmt: skip
    if onnx_dir is None:
        why = f"{manifest.name} names no ONNX export for the GPU (layout.gpu_model)"
    elif not (onnx_dir / ONNX_FILE).is_file():
        why = f"no {onnx_dir / ONNX_FILE} (the image lacks {layout.gpu_model})"
    else:
        why = f"{ORT_GPU} is not installed in the appliance venv (the image's layout-gpu extra)"
    return LayoutPlacement(**place, device="cpu", runtime="paddle, CPU", onnx=False, wanted_gpu=True, detail=why)
