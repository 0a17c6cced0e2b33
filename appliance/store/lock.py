"""Locks: what a manifest resolved to — commit, and every file's size and sha256 (DESIGN §2).

One JSON file per model under `manifests/locks/`, committed. The `digest` covers the sorted file
list, so `verify --fast` can tell a lock edited by hand from the one fetch wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from appliance.errors import LockError
from appliance.manifest import ModelManifest
from appliance.store.paths import check_listing

LOCK_VERSION = 1


class LockedFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


def files_digest(files: list[LockedFile]) -> str:
    """sha256 over `sha256  size  path` lines sorted by path (what `verify` recomputes)."""
    lines = "".join(f"{f.sha256}  {f.size}  {f.path}\n" for f in sorted(files, key=lambda f: f.path))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


class Lock(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lock_version: Literal[1] = LOCK_VERSION
    model: str
    source: str
    revision: str | None
    commit: str
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    total_size: int
    digest: str
    files: list[LockedFile]

    @model_validator(mode="after")
    def _consistent(self) -> Lock:
        check_listing(self.model, [f.path for f in self.files])
        if self.digest != files_digest(self.files):
            raise ValueError("digest does not match the file list (edited by hand?)")
        if self.total_size != sum(f.size for f in self.files):
            raise ValueError("total_size does not match the file list")
        return self

    @classmethod
    def create(cls, manifest: ModelManifest, commit: str, files: list[LockedFile]) -> Lock:
        files = sorted(files, key=lambda f: f.path)
        return cls(
            model=manifest.name,
            source=str(manifest.source),
            revision=manifest.revision,
            commit=commit,
            include=list(manifest.include),
            exclude=list(manifest.exclude),
            total_size=sum(f.size for f in files),
            digest=files_digest(files),
            files=files,
        )

    def by_path(self) -> dict[str, LockedFile]:
        return {f.path: f for f in self.files}

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), indent=2) + "\n"


def read_lock(path: Path) -> Lock | None:
    """The lock at `path`, None if there is none; LockError naming the problem if it is broken."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:  # unreadable, a folder, not text: one line, no traceback
        raise LockError(f"{path}: cannot read lock: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return Lock.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise LockError(f"{path}: invalid lock: {problems}") from None
    except Exception as exc:  # UnsafePathError from the listing check
        raise LockError(f"{path}: invalid lock: {exc}") from None


def write_atomic(path: Path, text: str) -> None:
    """Write via a temp file + rename, so a crash never leaves half a file where a good one was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_lock(path: Path, lock: Lock) -> None:
    write_atomic(path, lock.to_json())


def disagreements(manifest: ModelManifest, lock: Lock) -> list[str]:
    """Why `lock` no longer describes `manifest` (empty: it does)."""
    reasons = []
    if lock.model != manifest.name:
        reasons.append(f"lock is for model {lock.model!r}")
    if lock.source != str(manifest.source):
        reasons.append(f"source changed: lock {lock.source}, manifest {manifest.source}")
    if manifest.is_pinned and lock.commit != manifest.revision:
        reasons.append(f"revision changed: lock {lock.commit}, manifest {manifest.revision}")
    elif not manifest.is_pinned and lock.revision != manifest.revision:
        reasons.append(f"revision changed: lock {lock.revision!r}, manifest {manifest.revision!r}")
    if lock.include != list(manifest.include) or lock.exclude != list(manifest.exclude):
        reasons.append("include/exclude patterns changed")
    return reasons
