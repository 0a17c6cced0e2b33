"""Options shared by several commands, and the rich console every command prints through."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from appliance import constants
from appliance.manifest import Catalog, ModelManifest

console = Console(stderr=True)
out = Console()

ProfileOpt = Annotated[
    str | None,
    typer.Option("--profile", "-p", help=f"Profile whose models to act on (default {constants.DEFAULT_PROFILE})."),
]
ModelsArg = Annotated[list[str] | None, typer.Argument(help="Model names (default: every model of the profile).")]
StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", help="Store directory (default $APPLIANCE_STORE or ./store).", show_default=False),
]
ManifestsOpt = Annotated[
    Path | None,
    typer.Option(
        "--manifests", help="manifests/ directory (default $APPLIANCE_MANIFESTS or the checkout's).", show_default=False
    ),
]


def select_models(catalog: Catalog, profile: str | None, models: list[str] | None) -> list[ModelManifest]:
    """Named models, else every model of the profile (its layout models included)."""
    if models:
        if profile:
            raise typer.BadParameter("give model names or --profile, not both")
        return [catalog.model(name) for name in models]
    return catalog.profile_models(profile or constants.DEFAULT_PROFILE)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
