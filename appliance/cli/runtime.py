"""Run-time commands: the GPU memory plan and the host preflight (and, later, render / boot)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from appliance import constants
from appliance.cli._common import ManifestsOpt, StoreOpt, out
from appliance.manifest import Catalog
from appliance.runtime.doctor import report, run_checks
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
    title = f"{prof.name}: {result.device}" + (f" {result.total_bytes / GIB:.1f} GiB" if result.total_bytes else "")
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
            f"need {result.need_bytes / GIB:.2f} of {result.total_bytes / GIB:.1f} GiB"
        )
    else:
        out.print(f"cpu: KV cache {prof.target.cpu_kvcache_gib} GiB per server (VLLM_CPU_KVCACHE_SPACE)")


STATUS_STYLE = {"pass": "[green]pass[/]", "warn": "[yellow]warn[/]", "fail": "[bold red]fail[/]"}


def doctor(
    profile: Annotated[
        str | None,
        typer.Option("--profile", "-p", help="Profile to check (default $APPLIANCE_PROFILE, else tiny-cpu)."),
    ] = None,
    store: StoreOpt = None,
    gpu_memory_gib: Annotated[
        float | None,
        typer.Option(min=1, help="GPU memory the appliance may use, when less than nvidia-smi reports (a shared GPU)."),
    ] = None,
    running: Annotated[
        bool, typer.Option(help="The appliance is up: its ports are expected in use (reports any not listening).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON instead of a table.")] = False,
    manifests: ManifestsOpt = None,
) -> None:
    """Preflight the host the appliance runs on: GPU and its memory plan, compute capability, free
    disk for the caches, free ports, the store against its locks, the Python modules the models
    need in vLLM's interpreter, and the offline switches. Exits 1 if any check fails (warnings
    alone exit 0).

    Examples:

      docker exec ocr appliance doctor --running

      APPLIANCE_STORE=./store appliance doctor --profile gpu-12gb --json
    """
    catalog = Catalog(manifests)
    prof = catalog.profile(profile or constants.profile_name())
    checks = run_checks(catalog, prof, store or constants.store_dir(), gpu_memory_gib=gpu_memory_gib, running=running)
    result = report(prof.name, checks)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        table = Table("check", "status", "detail", title=f"appliance doctor: {prof.name}")
        for check in checks:
            table.add_row(escape(check.name), STATUS_STYLE[check.status], escape(check.detail))
        out.print(table)
        counts = result["counts"]
        out.print(f"{counts['pass']} passed, {counts['warn']} warning(s), {counts['fail']} failed")
    if not result["ok"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(plan)
    app.command()(doctor)
