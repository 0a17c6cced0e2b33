"""`appliance testing`: tiny generated models and local hubs — the embedded default profile."""

from __future__ import annotations

import typer

app = typer.Typer(help="Tiny models and local hub mirrors for offline tests and demos.", no_args_is_help=True)
