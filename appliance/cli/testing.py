"""`appliance testing`: tiny generated models and local hubs — the embedded default profile."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from appliance.cli._common import ManifestsOpt, out
from appliance.cli.mirror import HostOpt, PortOpt, serve_until_interrupted
from appliance.manifest import Catalog

app = typer.Typer(help="Tiny models and local hub mirrors for offline tests and demos.", no_args_is_help=True)


@app.command("make-tiny")
def make_tiny(
    out_dir: Annotated[
        Path, typer.Argument(help="Folder to write tiny-qwen3-vl/, tiny-paddleocr-vl/, tiny-dots-ocr/ into.")
    ],
    seed: Annotated[int, typer.Option(help="Same seed, byte-identical files.")] = 0,
) -> None:
    """Generate tiny random-weight models of the three real architectures (real tokenizer, processor and
    chat template)."""
    from appliance.testing.tiny import generate_all

    for name, path in generate_all(out_dir, seed=seed).items():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        out.print(f"{name}: {path} ({size / 1e6:.1f} MB)")


@app.command("tiny-hub", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def tiny_hub(
    ctx: typer.Context,
    manifests: ManifestsOpt = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 0,
    seed: Annotated[int, typer.Option(help="Seed of the generated models (the committed locks are seed 0).")] = 0,
) -> None:
    """Serve the tiny-cpu profile's generated models on a local HF + ModelScope mirror.

    With a command after `--`, run it with HF_ENDPOINT and MODELSCOPE_ENDPOINT pointing at the mirror
    and exit with its status; without, serve until Ctrl-C.

    Example:

      appliance testing tiny-hub -- appliance fetch --profile tiny-cpu --frozen
    """
    from appliance.mirror import HubMirror
    from appliance.testing.hub import tiny_repos

    with tempfile.TemporaryDirectory(prefix="tiny-hub-") as work:
        repos = tiny_repos(Path(work), Catalog(manifests), seed=seed)
        mirror = HubMirror(repos, host=host, port=port)
        if not ctx.args:
            serve_until_interrupted(mirror)
            return
        with mirror:
            env = os.environ | {"HF_ENDPOINT": mirror.url, "MODELSCOPE_ENDPOINT": mirror.url}
            code = subprocess.call(ctx.args, env=env)
    raise typer.Exit(code)


@app.command("relock-tiny")
def relock_tiny(manifests: ManifestsOpt = None) -> None:
    """Maintainers: after changing the tiny model generator, pin the tiny manifests to the new
    commits and rewrite their locks (fetching through the local mirror, as CI does)."""
    from appliance import constants
    from appliance.testing.hub import relock_tiny as relock

    with tempfile.TemporaryDirectory(prefix="tiny-relock-") as work:
        changed = relock(Catalog(manifests), constants.store_dir(), Path(work))
    out.print(f"re-pinned: {', '.join(changed) or 'nothing changed'}")
