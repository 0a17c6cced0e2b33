"""Misbehaviour a test can switch on, to prove a fetcher refuses what it must refuse.

File faults are keyed by a path (any repo) or by a `(repo_id, path)` pair. Body faults are applied
at fixed absolute offsets of the file, so a ranged (resumed) request sees the same damage as a full
one:

- `flip_byte`: the byte at offset `size // 2` is XOR-ed with 0xFF. Size and headers stay right.
- `truncate`: every response stops at offset `size // 2` although `Content-Length` promised more,
  then the connection is closed. Persistent: resuming never gets past that offset.
- `drop_after`: `{key: N}` — the connection is closed after N body bytes of a response, for the first
  `drop_times` responses of that file; later responses (e.g. the resume) are complete.
- `throttle`: `{key: bytes_per_second}` — bodies trickle out at that rate (a slow link, for
  interrupting a transfer in flight).
- `wrong_sha256`: listings advertise a wrong hash (HF tree `lfs.oid`, or `oid` for non-LFS files;
  ModelScope `Sha256`); the bytes served are the real ones.
- `extra_listing`: entries appended to root listings, to feed hostile paths (`../etc/passwd`,
  absolute paths, duplicates). Each is a dict with `path` and optional `size` (default 0), `type`
  (`file` | `directory`), `sha256` (HF: adds an `lfs` object), `repo_id` (only that repo),
  `hf` / `modelscope` (dicts merged verbatim into that protocol's entry, to break it further).
- `status`: force an HTTP status. Key: a repo id, `"repo_id@revision"` (revision as the client
  spelled it), a file path or `(repo_id, path)`. 401 is answered as a gated repo, 404 with the
  not-found code of what the key named (repo / revision / entry).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FaultKey = str | tuple[str, str]


@dataclass
class Faults:
    flip_byte: set[FaultKey] = field(default_factory=set)
    truncate: set[FaultKey] = field(default_factory=set)
    drop_after: dict[FaultKey, int] = field(default_factory=dict)
    drop_times: int = 1
    throttle: dict[FaultKey, int] = field(default_factory=dict)
    extra_listing: list[dict[str, Any]] = field(default_factory=list)
    wrong_sha256: set[FaultKey] = field(default_factory=set)
    status: dict[FaultKey, int] = field(default_factory=dict)


def hits(keys: set[FaultKey] | dict[FaultKey, Any], repo_id: str, path: str) -> bool:
    return path in keys or (repo_id, path) in keys


def lookup(keys: dict[FaultKey, Any], repo_id: str, path: str) -> Any:
    return keys.get((repo_id, path), keys.get(path))


def wrong_hash(sha: str) -> str:
    """A well-formed hash that is not `sha` (same length, every digit changed)."""
    return "".join("0123456789abcdef"[(int(c, 16) + 1) % 16] for c in sha.lower())


def forced_status(
    faults: Faults, repo_id: str, revision: str | None = None, path: str | None = None
) -> tuple[int, str] | None:
    """(status, what) for the first matching `status` key; `what` is repo / revision / entry."""
    if repo_id in faults.status:
        return faults.status[repo_id], "repo"
    if revision is not None and f"{repo_id}@{revision}" in faults.status:
        return faults.status[f"{repo_id}@{revision}"], "revision"
    if path is not None and (code := lookup(faults.status, repo_id, path)) is not None:
        return code, "entry"
    return None


def extra_entries(faults: Faults, repo_id: str) -> list[dict[str, Any]]:
    return [e for e in faults.extra_listing if e.get("repo_id", repo_id) == repo_id]
