"""One HTTP GET on loopback, no proxy: `python -m appliance.testing.probe URL [TIMEOUT]` prints
`{"status": …, "body": …}`. Imports nothing heavy: tests run it inside a network namespace
(`nsenter --net=…`) twice a second."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any


def get(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """{"status": HTTP status or None if nothing answered, "body": text}."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return {"status": response.status, "body": response.read().decode(errors="replace")}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read().decode(errors="replace")}
    except OSError as exc:
        return {"status": None, "body": str(exc)}


if __name__ == "__main__":
    print(json.dumps(get(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 5.0)))
