"""`appliance gateway`: the appliance's HTTP front (probes; later the OCR API)."""

from __future__ import annotations

from typing import Annotated

import typer

from appliance import constants
from appliance.manifest import Catalog

app = typer.Typer(
    help="The appliance's HTTP gateway: OCR API, OpenAI pass-through, probes, metrics.", no_args_is_help=True
)


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default $APPLIANCE_GATEWAY_HOST or 0.0.0.0).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: the profile's gateway_port).")] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request (probes too).")] = False,
) -> None:
    """Serve the OCR API (/v1/ocr, PaddleX /layout-parsing), the OpenAI pass-through (/v1/models,
    /v1/chat/completions), /metrics and the probes (/livez, /readyz, /startupz) for the profile in
    $APPLIANCE_PROFILE. API keys: APPLIANCE_API_KEYS_FILE or APPLIANCE_API_KEYS, else one is
    generated into $APPLIANCE_RUN_DIR/api-key at first start.

    Example:

      APPLIANCE_GATEWAY_HOST=127.0.0.1 appliance gateway serve --port 8080
    """
    import uvicorn

    from appliance.gateway.app import create_app

    catalog = Catalog()
    profile = catalog.profile(constants.profile_name())
    application = create_app(catalog, profile.name)
    uvicorn.run(
        application,
        host=host or constants.gateway_host(),
        port=port or profile.gateway_port,
        access_log=access_log,
        log_level="info",
    )
