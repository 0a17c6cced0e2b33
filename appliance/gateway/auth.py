"""API keys (Bearer) for every route but the probes.

Keys come from a mounted secret file (one per line, `#` comments) or `APPLIANCE_API_KEYS`
(comma-separated). With neither, the appliance is not left open: a key is generated at first start
and written to `<run dir>/api-key` (mode 0600), where the operator reads it with `docker exec`.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from fastapi import HTTPException, Request, status

from appliance import constants


def load_keys() -> list[str]:
    keys: list[str] = []
    path = os.environ.get("APPLIANCE_API_KEYS_FILE")
    if path:
        for line in Path(path).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                keys.append(line)
    keys += [k.strip() for k in os.environ.get("APPLIANCE_API_KEYS", "").split(",") if k.strip()]
    if keys:
        return keys
    generated = constants.run_dir() / "api-key"
    if not generated.exists():
        generated.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(generated, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    return [generated.read_text().strip()]


class ApiKeyAuth:
    """FastAPI dependency: 401 with `WWW-Authenticate: Bearer` unless a configured key is presented."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys]

    async def __call__(self, request: Request) -> None:
        # async: FastAPI runs a sync dependency in its thread pool, a thread hop on every request.
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        # Compare against every key in constant time, so timing tells nothing about a near miss.
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="missing or invalid API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
