"""A local directory or tarball (sneakernet import): no hub, no network."""

from __future__ import annotations

import os
import shutil
import tarfile
import threading
from pathlib import Path

from appliance import constants
from appliance.errors import SourceError, UnsafePathError
from appliance.store.paths import safe_relpath
from appliance.store.sources.base import Downloaded, ModelSource, RemoteFile

LOCAL_COMMIT = "local"  # placeholder: the fetcher derives a content commit from the hashes


class LocalSource(ModelSource):
    def __init__(self, manifest) -> None:  # type: ignore[no-untyped-def]
        super().__init__(manifest)
        location = Path(manifest.source.location).expanduser()
        self.path = location if location.is_absolute() else constants.project_root() / location
        self._extracted = threading.Lock()
        self._members: dict[str, tarfile.TarInfo] | None = None

    def describe(self) -> str:
        return f"{self.manifest.source.kind}:{self.path}"

    def resolve(self, revision: str | None) -> str:
        if not self.path.exists():
            raise SourceError(f"{self.model}: {self.describe()} does not exist")
        return LOCAL_COMMIT

    # --- directory -------------------------------------------------------------------------------

    def _allowed_root(self) -> str:
        # An HF cache snapshot (…/snapshots/<sha>/) is made of symlinks into …/blobs/: allow those.
        root = self.path.resolve()
        if root.parent.name == "snapshots" and (root.parent.parent / "blobs").is_dir():
            return str(root.parent.parent)
        return str(root)

    def _dir_files(self) -> list[RemoteFile]:
        allowed = self._allowed_root()
        files = []
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames[:] = sorted(d for d in dirnames if d != ".cache")  # huggingface_hub's local_dir metadata
            for name in filenames:
                full = Path(dirpath, name)
                rel = full.relative_to(self.path).as_posix()
                real = os.path.realpath(full)
                if not real.startswith(allowed + os.sep):
                    raise UnsafePathError(self.model, rel, f"symlink leads outside {self.path}")
                if not os.path.isfile(real):
                    raise UnsafePathError(self.model, rel, "not a regular file")
                files.append(RemoteFile(path=rel, size=os.path.getsize(real)))
        return files

    # --- tarball ---------------------------------------------------------------------------------

    def _tar_members(self) -> dict[str, tarfile.TarInfo]:
        if self._members is None:
            members: dict[str, tarfile.TarInfo] = {}
            with tarfile.open(self.path) as tar:
                infos = [m for m in tar.getmembers() if not m.isdir()]
            tops = {m.name.lstrip("./").split("/", 1)[0] for m in infos}
            # `tar -C store -cf x.tar model` wraps everything in one folder: strip it.
            strip = len(tops) == 1 and all("/" in m.name.lstrip("./") for m in infos)
            for info in infos:
                name = info.name.removeprefix("./")
                if strip:
                    name = name.split("/", 1)[1]
                if not info.isfile():
                    raise UnsafePathError(self.model, info.name, "tar member is a link or special file")
                members[name] = info
            self._members = members
        return self._members

    def list_files(self, commit: str) -> list[RemoteFile]:
        if self.manifest.source.kind == "dir":
            if not self.path.is_dir():
                raise SourceError(f"{self.model}: {self.describe()} is not a directory")
            return self._dir_files()
        try:
            return [RemoteFile(path=p, size=m.size) for p, m in self._tar_members().items()]
        except (tarfile.TarError, OSError) as exc:
            raise SourceError(f"{self.model}: cannot read {self.describe()}: {exc}") from exc

    def download(self, commit: str, file: RemoteFile, workdir: Path) -> Downloaded:
        target = workdir / safe_relpath(self.model, file.path)
        if target.is_file() and target.stat().st_size == file.size:
            return Downloaded(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        if self.manifest.source.kind == "dir":
            shutil.copyfile(self.path / file.path, partial)
        else:
            with self._extracted, tarfile.open(self.path) as tar:
                source = tar.extractfile(self._tar_members()[file.path])
                assert source is not None  # regular files only, checked in _tar_members
                with source, open(partial, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
        os.replace(partial, target)
        return Downloaded(target)
