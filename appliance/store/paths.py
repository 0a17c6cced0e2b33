"""Listing hygiene: every path a source names must stay inside the model directory, once."""

from __future__ import annotations

import os
import posixpath
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from appliance.errors import UnsafePathError

NAME_MAX = 255  # bytes per path component on ext4, xfs, btrfs, overlayfs
PATH_MAX = 4096


def safe_relpath(model: str, path: str) -> str:
    """Return `path` normalised to a relative POSIX path inside the model dir, or raise."""
    if not path or "\x00" in path:
        raise UnsafePathError(model, path, "empty or contains NUL")
    if "\\" in path:
        raise UnsafePathError(model, path, "contains a backslash")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise UnsafePathError(model, path, "absolute path")
    parts = path.split("/")
    if ".." in parts:
        raise UnsafePathError(model, path, "'..' would leave the model directory")
    normal = posixpath.normpath(path)
    if normal in (".", "") or normal.startswith("../"):
        raise UnsafePathError(model, path, "does not name a file inside the model directory")
    if any(not ch.isprintable() for ch in normal):
        raise UnsafePathError(model, path, "contains a control character")
    try:
        encoded = normal.encode()
    except UnicodeEncodeError:  # a lone surrogate: a name no file system round-trips
        raise UnsafePathError(model, path, "is not valid UTF-8") from None
    if len(encoded) > PATH_MAX or any(len(part) > NAME_MAX for part in encoded.split(b"/")):
        raise UnsafePathError(model, path, f"too long (over {NAME_MAX} bytes per name or {PATH_MAX} in all)")
    return normal


def check_listing(model: str, paths: Iterable[str]) -> list[str]:
    """Normalise every path and refuse unsafe ones and duplicates (also a file that is a folder's prefix).

    Names equal after Unicode NFC normalisation are duplicates too: `café` composed and decomposed
    are two files on Linux but one on macOS and in most tools, so which one a user gets is luck.
    """
    seen: dict[str, str] = {}
    result: list[str] = []
    for raw in paths:
        path = safe_relpath(model, raw)
        key = unicodedata.normalize("NFC", path)
        if key in seen:
            twin = "" if seen[key] == path else f" (Unicode twin of {seen[key]!a}: {path!a})"
            raise UnsafePathError(model, raw, f"listed twice{twin}")
        seen[key] = path
        result.append(path)
    folders = {posixpath.dirname(p) for p in result}
    for path in result:
        # `a` as a file and `a/b` as a file cannot both exist on disk.
        if any(f == path or f.startswith(path + "/") for f in folders):
            raise UnsafePathError(model, path, "is both a file and a folder")
    return result


def inside(root: Path, path: str) -> Path:
    """`root/path`, refusing any symlink on the way that resolves outside `root`."""
    target = root / path
    real_root = os.path.realpath(root)
    real = os.path.realpath(target)
    if real != real_root and not real.startswith(real_root + os.sep):
        raise UnsafePathError(root.name, path, "a symlink leads outside the model directory")
    return target
