"""`appliance` — every user action is a subcommand; the Makefile only calls these."""

from __future__ import annotations

import os
import sys

import typer

from appliance import constants
from appliance.cli import gateway, image, mirror, runtime, store, testing
from appliance.errors import ApplianceError, Interrupted

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


# Third-party modules only an extra installs (pyproject.toml), and that extra.
EXTRA_OF = {
    "numpy": "testing",
    "torch": "testing",
    "torchvision": "testing",
    "transformers": "testing",
    "tokenizers": "testing",
    "safetensors": "testing",
    "paddle": "gateway",
    "paddleocr": "gateway",
    "paddlex": "gateway",
}


def _interrupted(message: str) -> None:
    """Exit 130 now: worker threads still in a transfer are abandoned, not joined (their partial
    files stay for the next run), so Ctrl-C never waits for a download to finish."""
    print(message, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def _usage_errors() -> tuple[type[Exception], ...]:
    """typer ≥ 0.22 vendors click (its exceptions derive from typer.TyperException); older ones use
    click itself."""
    errors: list[type[Exception]] = [typer.TyperException]
    try:
        import click

        errors.append(click.ClickException)
    except ImportError:
        pass
    return tuple(errors)


def main() -> None:
    """Entry point: expected failures print one clear line and exit non-zero, no traceback."""
    try:
        # Without standalone mode click *returns* the code of a `typer.Exit(code)` instead of exiting.
        code = app(standalone_mode=False)
    except Interrupted as exc:
        _interrupted(str(exc))
    except ApplianceError as exc:
        if constants.debug():
            raise
        print(f"error: {exc}", file=sys.stderr)
        print("(set APPLIANCE_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _interrupted("interrupted")
    except typer.Abort as exc:  # click's wrapping of Ctrl-C
        if isinstance(exc.__cause__, KeyboardInterrupt):
            _interrupted("interrupted")
        sys.exit(1)
    except ModuleNotFoundError as exc:
        extra = EXTRA_OF.get((exc.name or "").split(".")[0])
        if extra is None or constants.debug():
            raise
        print(f"error: this command needs {exc.name}: pip install 'ocr-appliance[{extra}]'", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:  # a file we could not read or write, named: not a traceback
        if exc.filename is None or constants.debug():
            raise
        print(f"error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # usage errors (a missing path, a bad option): click's message, exit 2
        if isinstance(exc, _usage_errors()):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(getattr(exc, "exit_code", 2))
        raise
    if isinstance(code, int) and code:
        sys.exit(code)
