"""Run-time commands: the GPU memory plan (and, later, render / doctor / boot)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from appliance import constants
from appliance.cli._common import ManifestsOpt, out
from appliance.manifest import Catalog
from appliance.runtime.plan import GIB, plan_profile


def plan(
    profile: Annotated[str, typer.Option("--profile", "-p", help="Profile to plan.")] = constants.DEFAULT_PROFILE,
    gpu_memory_gib: Annotated[
        float | None, typer.Option(min=1, help="Plan for this much GPU memory instead of the profile's target.")
    ] = None,
    manifests: ManifestsOpt = None,
) -> None:
    """Show how the profile's vLLM servers share the GPU: per model weights + KV cache + overhead, and the
    --gpu-memory-utilization each gets (a fraction of *total* memory). Exits 1, with the numbers, if
    the models cannot fit within the profile's safe fraction.

    Example:

      appliance plan --profile gpu-12gb --gpu-memory-gib 16
    """
    catalog = Catalog(manifests)
    prof = catalog.profile(profile)
    result = plan_profile(catalog, prof, gpu_memory_gib)
    title = f"{prof.name}: {result.device}" + (f" {result.total_bytes / GIB:.0f} GiB" if result.total_bytes else "")
    table = Table("model", "weights", "KV cache", "overhead", "need", "fraction", title=title)
    for m in result.models:
        table.add_row(
            m.name,
            f"{m.weight_bytes / GIB:.2f} GiB",
            f"{m.kv_bytes / GIB:.2f} GiB",
            f"{m.overhead_bytes / GIB:.2f} GiB",
            f"{m.need_bytes / GIB:.2f} GiB",
            f"{m.fraction:.2f}" if result.device == "cuda" else "-",
        )
    out.print(table)
    if result.device == "cuda":
        total = sum(m.fraction for m in result.models)
        out.print(
            f"sum of fractions {total:.2f} <= safe {result.safe_fraction:.2f}; "
            f"need {result.need_bytes / GIB:.2f} of {result.total_bytes / GIB:.0f} GiB"
        )
    else:
        out.print(f"cpu: KV cache {prof.target.cpu_kvcache_gib} GiB per server (VLLM_CPU_KVCACHE_SPACE)")


def register(app: typer.Typer) -> None:
    app.command()(plan)
