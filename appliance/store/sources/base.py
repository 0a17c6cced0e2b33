"""What every source offers the fetcher."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from appliance.manifest import ModelManifest


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int | None
    sha256: str | None = None  # content sha256 the hub publishes (HF LFS oid, ModelScope Sha256)
    git_sha1: str | None = None  # git blob id the hub publishes for files outside LFS


class ModelSource(ABC):
    def __init__(self, manifest: ModelManifest) -> None:
        self.manifest = manifest
        self.model = manifest.name

    def describe(self) -> str:
        return str(self.manifest.source)

    @abstractmethod
    def resolve(self, revision: str | None) -> str:
        """The commit id a revision (branch, tag or commit) points at now."""

    @abstractmethod
    def list_files(self, commit: str) -> list[RemoteFile]:
        """Every file at `commit`, unfiltered and unchecked (the fetcher filters and checks)."""

    @abstractmethod
    def download(self, commit: str, file: RemoteFile, workdir: Path) -> Path:
        """Bring one file into `workdir` (resuming a partial one) and return where it is."""

    def discard(self, workdir: Path, file: RemoteFile) -> None:
        """Forget a download that failed its checks, so the next attempt starts from zero."""
        (workdir / file.path).unlink(missing_ok=True)
