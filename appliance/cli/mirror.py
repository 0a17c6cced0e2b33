"""`appliance mirror`: serve a verified store to other hosts of the isolated site."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from appliance.cli._common import ManifestsOpt, out
from appliance.errors import ApplianceError
from appliance.manifest import Catalog

app = typer.Typer(help="Serve models over the Hugging Face and ModelScope hub protocols.", no_args_is_help=True)

HostOpt = Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for every interface of the site).")]
PortOpt = Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")]


def serve_until_interrupted(mirror) -> None:  # type: ignore[no-untyped-def]
    """Serve until SIGINT (Ctrl-C) or SIGTERM (`kill`, `docker stop`). Both handlers are set here:
    a shell starts background jobs with SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with mirror:
        out.print(f"serving on {mirror.url}  (Ctrl-C stops)")
        out.print(f"  export HF_ENDPOINT={mirror.url} MODELSCOPE_ENDPOINT={mirror.url}")
        stop.wait()
        out.print("stopped")


@app.command()
def serve(
    store: Annotated[
        Path, typer.Argument(help="Store directory (one folder per model).", exists=True, file_okay=False)
    ],
    manifests: ManifestsOpt = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8090,
) -> None:
    """Serve every locked model in STORE at its locked commit, under its source repo id.

    Other hosts of the isolated site then run `appliance fetch` unchanged with HF_ENDPOINT (or
    MODELSCOPE_ENDPOINT) pointing here and get byte-identical, lock-verified models. The store is fast-verified
     first; a damaged store is refused.

    Example:

      appliance mirror serve ./store --host 0.0.0.0 --port 8090
    """
    from appliance.mirror import HubMirror
    from appliance.mirror.store import repos_from_store

    repos = repos_from_store(store, Catalog(manifests))
    if not repos:
        raise ApplianceError(f"{store}: no model with a lock found; fetch one first (appliance fetch)")
    for repo in repos:
        out.print(f"  {repo.repo_id} @ {repo.commit[:12]}  ({len(repo.files)} files)")
    serve_until_interrupted(HubMirror(repos, host=host, port=port))
