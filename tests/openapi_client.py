"""A Python client generated from the gateway's OpenAPI document by openapi-python-client, the way an
integrator would make one, importable by the tests."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

PACKAGE = "appliance_api_client"


def generate(spec: dict[str, Any], where: Path) -> ModuleType:
    """Generate the client into `where/appliance_api_client` and import it; any warning of the
    generator (a schema it could not turn into code) fails."""
    document = where / "openapi.json"
    document.write_text(json.dumps(spec))
    tools = str(Path(sys.executable).parent)  # the generator formats its output with this venv's ruff
    env = dict(os.environ, PATH=f"{tools}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run(
        [f"{tools}/openapi-python-client", "generate", "--path", str(document), "--meta", "none",
         "--output-path", str(where / PACKAGE)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Warning" not in output and "Error" not in output, output
    _import_unset(where / PACKAGE / "api")
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]  # a client generated earlier in this process
    sys.path.insert(0, str(where))
    try:
        return importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(where))


def _import_unset(api: Path) -> None:
    """openapi-python-client 0.29.1 types a required body with several content types (our `/v1/ocr`)
    `… | Unset` without importing `Unset` (upstream issue #1451): add the import it forgot."""
    for module in api.rglob("*.py"):
        text = module.read_text()
        if "| Unset" in text and "import Unset" not in text and " Unset," not in text:
            module.write_text(text.replace("\nimport httpx\n", "\nimport httpx\n\nfrom ...types import Unset\n", 1))


def submodule(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{name}")
