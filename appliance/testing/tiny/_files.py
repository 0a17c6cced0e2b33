"""Byte-stable JSON: the same object gives the same bytes on every run and machine."""

from __future__ import annotations

import json
from typing import Any


def dump_json(obj: Any) -> str:
    # Sorted keys and fixed indentation so dict insertion order never reaches the bytes; "\n" at
    # the end like files saved by transformers.
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
