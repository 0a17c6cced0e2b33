"""Byte-stable writers: the same inputs must give the same bytes on every run and machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def dump_json(obj: Any) -> str:
    # Sorted keys and fixed separators so dict insertion order never reaches the bytes.
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def write_json(path: Path, obj: Any) -> None:
    write_text(path, dump_json(obj))


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # newline="" keeps "\n" on every platform.
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write(text)


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
