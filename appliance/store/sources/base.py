"""What every source offers the fetcher."""

from __future__ import annotations

import os
import socket
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from appliance.errors import HubUnreachableError
from appliance.manifest import ModelManifest


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int | None
    sha256: str | None = None  # content sha256 the hub publishes (HF LFS oid, ModelScope Sha256)
    git_sha1: str | None = None  # git blob id the hub publishes for files outside LFS


class StopRequested(BaseException):
    """Raised inside a transfer once the fetch was interrupted: the partial file stays for resume.
    A BaseException, like KeyboardInterrupt, so the hub clients' retry loops (`except Exception`)
    let it through instead of retrying."""


@dataclass(frozen=True)
class Downloaded:
    path: Path
    sha256: str | None = None  # computed while the bytes were written, if the source could


class ModelSource(ABC):
    def __init__(self, manifest: ModelManifest) -> None:
        self.manifest = manifest
        self.model = manifest.name
        # Set by the fetcher on Ctrl-C; transfers check it between chunks and stop within one.
        self.stop = threading.Event()

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise StopRequested(self.model)

    def copy(self, source: BinaryIO, out: BinaryIO, chunk: int = 1 << 20) -> None:
        """copyfileobj that stops between chunks once the fetch is interrupted."""
        while data := source.read(chunk):
            self.check_stop()
            out.write(data)

    def describe(self) -> str:
        return str(self.manifest.source)

    @abstractmethod
    def resolve(self, revision: str | None) -> str:
        """The commit id a revision (branch, tag or commit) points at now."""

    @abstractmethod
    def list_files(self, commit: str) -> list[RemoteFile]:
        """Every file at `commit`, unfiltered and unchecked (the fetcher filters and checks)."""

    @abstractmethod
    def download(self, commit: str, file: RemoteFile, workdir: Path) -> Downloaded:
        """Bring one file into `workdir` (resuming a partial one) and say where it is."""

    def preflight(self) -> None:  # noqa: B027 (optional hook: local sources need none)
        """Fail fast, with a clear error, when the source cannot be reached at all."""

    def discard(self, workdir: Path, file: RemoteFile) -> None:
        """Forget a download that failed its checks, so the next attempt starts from zero."""
        (workdir / file.path).unlink(missing_ok=True)


def check_reachable(url: str, model: str, hint: str) -> None:
    """One TCP connect before fanning out: the hub clients retry an unreachable host for ~25 s per
    file with backoff, which turns "offline" into minutes of silence. Skipped behind a proxy."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=10).close()
    except OSError as exc:
        raise HubUnreachableError(f"{model}: cannot reach {url} ({exc.strerror or exc}). {hint}") from exc
