"""GPU memory plan: how much of the *total* GPU memory each vLLM server may claim.

vLLM's `--gpu-memory-utilization` is a fraction of total device memory that one server may use
for weights + KV cache + activations. Two servers on one GPU therefore must have fractions that
sum below 1 with room for the CUDA contexts — the field's hand-tuned 0.85 + 0.70 could never fit.
Per model: weights + KV bytes/token x max_model_len x max_num_seqs + overhead, then a common
scale-up so the spare memory is shared in proportion (more KV cache, never less than needed).

A PaddleOCR-VL layout model that runs on the GPU (its ONNX export under ONNX Runtime, cuda
profiles: `layout.gpu_model`) is no vLLM server but takes GPU memory too: it gets a fixed share
(weights + overhead of its manifest, which also caps ONNX Runtime's arena) before the vLLM servers
share the rest, so the fractions rendered for vLLM leave room for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from appliance.errors import ApplianceError
from appliance.manifest import Catalog, ModelManifest, Profile, ProfileModel

GIB = 1 << 30


class PlanError(ApplianceError):
    """The profile does not fit its GPU; the message shows the numbers."""


@dataclass(frozen=True)
class ModelPlan:
    name: str
    weight_bytes: int
    kv_bytes: int
    overhead_bytes: int
    fraction: float  # --gpu-memory-utilization (cuda); 0 on cpu; a layout model's reserved share
    kind: str = "vllm"  # or "layout": a layout model on the GPU (ONNX Runtime in the gateway), no vLLM flag

    @property
    def need_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.overhead_bytes


@dataclass(frozen=True)
class Plan:
    profile: str
    device: str
    total_bytes: int  # GPU memory (cuda) or 0 (cpu)
    safe_fraction: float
    models: list[ModelPlan]

    def fraction(self, model: str) -> float:
        return next(m.fraction for m in self.models if m.name == model and m.kind == "vllm")

    @property
    def need_bytes(self) -> int:
        return sum(m.need_bytes for m in self.models)


def model_need(manifest: ModelManifest, entry: ProfileModel, weight_bytes: int | None = None) -> tuple[int, int, int]:
    """(weights, KV cache for max_model_len x max_num_seqs tokens, overhead) in bytes."""
    res = manifest.resources
    kv = res.kv_bytes_per_token * entry.max_model_len * entry.max_num_seqs
    return weight_bytes or res.weight_bytes, kv, res.overhead_bytes


def _served(catalog: Catalog, profile: Profile) -> list[tuple[ModelManifest, ProfileModel]]:
    pairs = [(catalog.model(entry.model), entry) for entry in profile.models]
    return [(m, e) for m, e in pairs if m.serve is not None]


def gpu_layout_models(catalog: Catalog, profile: Profile) -> list[ModelManifest]:
    """The layout model that runs on the GPU in `profile` (cuda only): the ONNX export its PaddleOCR-VL
    model names (`layout.gpu_model`)."""
    if profile.target.device != "cuda":
        return []
    # Only the first PaddleOCR-VL model of a profile gets a pipeline in the gateway
    # (appliance.gateway.engines_setup.build_engines): a later one's layout model is never loaded.
    first = next((m for m, _ in _served(catalog, profile) if m.engine == "paddleocr-vl"), None)
    if first is None or first.layout is None or first.layout.gpu_model is None:
        return []
    return [catalog.model(first.layout.gpu_model)]


def plan_profile(catalog: Catalog, profile: Profile, gpu_memory_gib: float | None = None) -> Plan:
    """Fractions for every served model of `profile`; PlanError if they cannot fit."""
    served = _served(catalog, profile)
    target = profile.target
    if target.device == "cpu":
        models = [ModelPlan(m.name, *model_need(m, e), fraction=0.0) for m, e in served]
        return Plan(profile.name, "cpu", 0, target.safe_fraction, models)
    total = int((gpu_memory_gib or target.gpu_memory_gib or 0) * GIB)
    needs = [(m.name, *model_need(m, e)) for m, e in served]
    gpu_layouts = gpu_layout_models(catalog, profile)
    layouts = [(m.name, m.resources.weight_bytes, 0, m.resources.overhead_bytes) for m in gpu_layouts]
    need = sum(w + kv + o for _, w, kv, o in needs + layouts)
    budget = total * target.safe_fraction
    # Fractions are rendered with two decimals: round each need *up*, then share what is left of
    # the safe total in proportion to need, rounded *down*, so neither side can overshoot.
    # A layout model's share renders no flag: reserved exactly (its arena is capped by the engine).
    reserved = [(w + o) / total for _, w, _, o in layouts]
    base = [math.ceil((w + kv + o) / total * 100) / 100 for _, w, kv, o in needs]
    if need > budget or sum(base) + sum(reserved) > target.safe_fraction + 1e-9:
        rows = "\n".join(
            f"  {name:24s} weights {w / GIB:6.2f} + KV {kv / GIB:6.2f} + overhead {o / GIB:5.2f}"
            f" = {(w + kv + o) / GIB:6.2f} GiB"
            for name, w, kv, o in needs + layouts
        )
        raise PlanError(
            f"profile {profile.name} needs {need / GIB:.2f} GiB but {total / GIB:.1f} GiB x {target.safe_fraction:.2f} "
            f"= {budget / GIB:.2f} GiB is the safe total:\n{rows}\n"
            "Lower max_model_len / max_num_seqs, use an FP8 variant, or drop a model."
        )
    spare = target.safe_fraction - sum(base) - sum(reserved)
    served_need = sum(w + kv + o for _, w, kv, o in needs)
    models = [
        ModelPlan(name, w, kv, o, fraction=round(b + _floor(spare * (w + kv + o) / served_need), 2))
        for (name, w, kv, o), b in zip(needs, base, strict=True)
    ]
    for (name, w, _, o), share in zip(layouts, reserved, strict=True):
        models.append(ModelPlan(name, w, 0, o, fraction=round(share, 4), kind="layout"))
    return Plan(profile.name, "cuda", total, target.safe_fraction, models)


def _floor(value: float) -> float:
    """Round down to 0.01 so the rendered fractions never sum above the budget."""
    return int(value * 100) / 100
