"""`appliance` — every user action is a subcommand; the Makefile only calls these."""

from __future__ import annotations

import sys

import typer

from appliance import constants
from appliance.cli import gateway, image, mirror, runtime, store, testing
from appliance.errors import ApplianceError

app = typer.Typer(
    name="appliance",
    help=(
        "Offline OCR appliance builder: fetch pinned models into a verified store, serve them with vLLM "
        "under supervisord, and bake everything into an image that boots with no network."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
store.register(app)
runtime.register(app)
app.add_typer(gateway.app, name="gateway")
app.add_typer(mirror.app, name="mirror")
app.add_typer(testing.app, name="testing")
app.add_typer(image.app, name="image")
app.add_typer(image.bundle_app, name="bundle")
app.add_typer(image.keys_app, name="keys")


def main() -> None:
    """Entry point: expected failures print one clear line and exit non-zero, no traceback."""
    try:
        # Without standalone mode click *returns* the code of a `typer.Exit(code)` instead of exiting.
        code = app(standalone_mode=False)
    except ApplianceError as exc:
        if constants.debug():
            raise
        print(f"error: {exc}", file=sys.stderr)
        print("(set APPLIANCE_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted; a fetch resumes where it stopped when run again", file=sys.stderr)
        sys.exit(130)
    except typer.Abort:
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click's usage errors and the like
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)
