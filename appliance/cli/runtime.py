"""Run-time commands: `plan`, `doctor`, `render`, `boot`, and the `runtime` group supervisord runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path, PurePosixPath
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from appliance import constants
from appliance.cli._common import ManifestsOpt, StoreOpt, console, out
from appliance.manifest import Catalog
from appliance.runtime.doctor import report, run_checks
from appliance.runtime.plan import GIB, plan_profile

runtime_app = typer.Typer(
    help="Programs supervisord runs inside the appliance (boot sequencer, fatal listener) and start-up status.",
    no_args_is_help=True,
)


def plan(
    profile: Annotated[str, typer.Option("--profile", "-p", help="Profile to plan.")] = constants.DEFAULT_PROFILE,
    gpu_memory_gib: Annotated[
        float | None, typer.Option(min=1, help="Plan for this much GPU memory instead of the profile's target.")
    ] = None,
    manifests: ManifestsOpt = None,
) -> None:
    """Show how the profile's vLLM servers share the GPU: per model weights + KV cache + overhead, and the
    --gpu-memory-utilization each gets (a fraction of *total* memory); a layout model that runs on the
    GPU (ONNX Runtime in the gateway) is listed with its reserved share. Exits 1, with the numbers, if
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
            m.name if m.kind == "vllm" else f"{m.name} (layout)",
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
    cuda_version: Annotated[
        str | None,
        typer.Option(
            help="The image's CUDA version, to check the host driver against (default $APPLIANCE_CUDA_VERSION, "
            "set in the image; outside it, read the image's appliance.cuda-version label)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON instead of a table.")] = False,
    manifests: ManifestsOpt = None,
) -> None:
    """Preflight the host the appliance runs on: GPU and its memory plan, compute capability, free
    disk for the caches, free ports, the store against its locks, the Python modules the models
    need in vLLM's interpreter, and the offline switches; the host's NVIDIA driver against the
    minimum the image's CUDA needs. Exits 1 if any check fails (warnings alone exit 0).

    Examples:

      docker exec ocr appliance doctor --running

      appliance doctor -p gpu-24gb --cuda-version 13.0.1   # docker inspect IMAGE: appliance.cuda-version

      APPLIANCE_STORE=./store appliance doctor --profile gpu-12gb --json
    """
    catalog = Catalog(manifests)
    prof = catalog.profile(profile or constants.profile_name())
    checks = run_checks(
        catalog,
        prof,
        store or constants.store_dir(),
        gpu_memory_gib=gpu_memory_gib,
        running=running,
        cuda_version=cuda_version,
    )
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


def render(
    profile: Annotated[str, typer.Option("--profile", "-p", help="Profile to render.")] = constants.DEFAULT_PROFILE,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="File to write; '-' for standard output.")] = Path(
        "supervisord.conf"
    ),
    models_root: Annotated[
        str, typer.Option(help="Folder holding one folder per model (the image's read-only /models).")
    ] = "/models",
    manifests: ManifestsOpt = None,
) -> None:
    """Render supervisord.conf for a profile: one program per vLLM server (the exact vLLM flags,
    behind the boot sequencer), the gateway, and the fatal-exit listener.

    Examples:

      appliance render --profile gpu-24gb --out supervisord.conf

      appliance render -o - | less
    """
    from appliance.runtime.supervisor import render_supervisord_conf

    catalog = Catalog(manifests)
    text = render_supervisord_conf(catalog, catalog.profile(profile), PurePosixPath(models_root))
    if str(out_path) == "-":
        sys.stdout.write(text)
    else:
        out_path.write_text(text, encoding="utf-8")
        console.print(f"wrote {out_path} ({profile})")


def boot(
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Profile to run (default $APPLIANCE_PROFILE, baked in).")
    ] = None,
    conf: Annotated[
        Path | None,
        typer.Option(
            help="supervisord.conf to run (default $APPLIANCE_SUPERVISORD_CONF, else the profile's, rendered now).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Container entrypoint (under tini): prepare the run dir and control credentials, run supervisord,
    and exit non-zero (3) if an essential program went FATAL.

    The control password comes from the file named by APPLIANCE_SUPERVISOR_PASSWORD_FILE (a mounted
    secret), else is generated at first boot. Either way the operator's client configuration is
    written to <run dir>/supervisorctl.conf (mode 0600):

      docker exec CTR supervisorctl -c /run/appliance/supervisorctl.conf status
    """
    from appliance.runtime.boot import boot as run_boot

    raise typer.Exit(run_boot(profile, conf))


@runtime_app.command(
    "launch", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, no_args_is_help=True
)
def launch(
    model: Annotated[str, typer.Argument(help="Model (= supervisord program) to start.")],
    command: Annotated[list[str], typer.Argument(help="The server command, after `--`.", show_default=False)],
    manifests: ManifestsOpt = None,
) -> None:
    """Boot sequencer of one model: fast-verify its folder against the lock, wait until the previous
    model of the profile answers /health, then exec the server command (phases in the run dir's phases/ folder).

    Example (what supervisord.conf runs):

      appliance runtime launch m -- python3 -m vllm.entrypoints.openai.api_server --model /models/m ...
    """
    from appliance.runtime.launch import launch as run_launch

    catalog = Catalog(manifests)
    run_launch(model, list(command), catalog, catalog.profile(constants.profile_name()))


@runtime_app.command("fatal-listener")
def fatal_listener(
    essential: Annotated[str, typer.Option(help="Comma-separated programs whose FATAL stops the appliance.")] = "",
    start_retries: Annotated[
        str, typer.Option(help="model=N,…: exits before ready tolerated per model (then handled as FATAL).")
    ] = "",
) -> None:
    """supervisord event listener for PROCESS_STATE_FATAL and _EXITED (the protocol on stdin/stdout)."""
    from appliance.runtime.fatal import parse_retries, run

    run({name for name in essential.split(",") if name}, sys.stdin, sys.stdout, retries=parse_retries(start_retries))


@runtime_app.command("status")
def status(manifests: ManifestsOpt = None) -> None:
    """Every model's start-up phase and seconds in it (what the gateway's /startupz reports).

    Example:

      docker exec CTR appliance runtime status
    """
    from appliance.runtime.phases import startup_report

    catalog = Catalog(manifests)
    prof = catalog.profile(constants.profile_name())
    table = Table("model", "essential", "phase", "seconds", "port", "detail", title=f"{prof.name} start-up")
    for m in startup_report(catalog, prof):
        table.add_row(m.model, "yes" if m.essential else "no", m.phase, f"{m.seconds:.0f}", str(m.port), m.detail)
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command()(plan)
    app.command()(doctor)
    app.command()(render)
    app.command()(boot)
    app.add_typer(runtime_app, name="runtime")
