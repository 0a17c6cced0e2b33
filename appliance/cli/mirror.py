"""`appliance mirror`: serve a verified store to other hosts of the isolated site."""

from __future__ import annotations

import typer

app = typer.Typer(help="Serve models over the Hugging Face and ModelScope hub protocols.", no_args_is_help=True)
