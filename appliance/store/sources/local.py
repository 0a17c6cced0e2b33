"""A local directory or tarball (sneakernet import): no hub, no network."""

from __future__ import annotations

import os
import stat
import tarfile
import threading
from pathlib import Path

from appliance import constants
from appliance.errors import SourceError, UnsafePathError
from appliance.store.paths import check_listing, safe_relpath
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
        """Every regular file under the folder. Links are followed only while they stay inside it
        (directory links too: skipping one would silently drop its files from the model)."""
        allowed = self._allowed_root()
        files = []

        def inside(real: str) -> bool:
            return real.startswith(allowed + os.sep)

        def refuse(full: str, reason: str) -> None:
            raise UnsafePathError(self.model, Path(full).relative_to(self.path).as_posix(), reason)

        def unreadable(exc: OSError) -> None:
            raise SourceError(f"{self.model}: cannot read {exc.filename}: {exc.strerror}")

        for dirpath, dirnames, filenames in os.walk(self.path, onerror=unreadable, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if d != ".cache")  # huggingface_hub's local_dir metadata
            for name in dirnames:
                full = os.path.join(dirpath, name)
                if not os.path.islink(full):
                    continue
                real = os.path.realpath(full)
                # A link back to a folder it sits in would be walked forever.
                rel = Path(dirpath).relative_to(self.path)
                chain = {os.path.realpath(self.path.joinpath(*rel.parts[:i])) for i in range(len(rel.parts) + 1)}
                if real in chain:
                    refuse(full, "directory symlink loops back to a folder it is in")
                if not inside(real):
                    refuse(full, f"directory symlink leads outside {self.path}")
            for name in filenames:
                full = os.path.join(dirpath, name)
                real = os.path.realpath(full)
                if os.path.islink(full) and not os.path.exists(full):
                    refuse(full, "broken symlink")
                if not inside(real):
                    refuse(full, f"symlink leads outside {self.path}")
                try:
                    st = os.stat(real)
                except OSError as exc:
                    unreadable(exc)
                if not stat.S_ISREG(st.st_mode):
                    refuse(full, "not a regular file (a device, FIFO or socket)")
                if not os.access(real, os.R_OK):
                    raise SourceError(f"{self.model}: cannot read {full}: permission denied")
                files.append(RemoteFile(path=Path(full).relative_to(self.path).as_posix(), size=st.st_size))
        return files

    # --- tarball ---------------------------------------------------------------------------------

    def _tar_members(self) -> dict[str, tarfile.TarInfo]:
        """Regular-file members by their path in the model. Refused whole: a link or special file,
        an unsafe or over-long name, and a name given twice (else the last copy would silently win)."""
        if self._members is None:
            with tarfile.open(self.path) as tar:
                infos = [m for m in tar.getmembers() if not m.isdir()]
            names = [safe_relpath(self.model, m.name) for m in infos]  # raw names: no silent repair
            tops = {n.split("/", 1)[0] for n in names}
            # `tar -C store -cf x.tar model` wraps everything in one folder: strip it.
            strip = len(tops) == 1 and all("/" in n for n in names)
            members: dict[str, tarfile.TarInfo] = {}
            for info, name in zip(infos, names, strict=True):
                if not info.isfile():
                    raise UnsafePathError(self.model, info.name, "tar member is a link or special file")
                members.setdefault(name.split("/", 1)[1] if strip else name, info)
            try:
                check_listing(self.model, [n.split("/", 1)[1] if strip else n for n in names])
            except UnsafePathError as exc:
                raise UnsafePathError(self.model, exc.path, f"{exc.reason} in {self.path}") from None
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
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[0]
            raise SourceError(f"{self.model}: cannot read {self.describe()}: {reason.rstrip(':')}") from exc

    def download(self, commit: str, file: RemoteFile, workdir: Path) -> Downloaded:
        target = workdir / safe_relpath(self.model, file.path)
        if target.is_file() and target.stat().st_size == file.size:
            return Downloaded(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        if self.manifest.source.kind == "dir":
            with open(self.path / file.path, "rb") as source, open(partial, "wb") as out:
                self.copy(source, out)
        else:
            with self._extracted, tarfile.open(self.path) as tar:
                source = tar.extractfile(self._tar_members()[file.path])
                assert source is not None  # regular files only, checked in _tar_members
                with source, open(partial, "wb") as out:
                    self.copy(source, out)
        os.replace(partial, target)
        return Downloaded(target)
