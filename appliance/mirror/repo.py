"""What a mirror serves: repos made of files that live somewhere on local disk."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# Files stored in git LFS on the real Hugging Face hub: its default .gitattributes routes weight
# and archive suffixes to LFS, and anything large ends up there too. LFS files are listed with an
# `lfs` object carrying the sha256, and their ETag is that sha256.
LFS_THRESHOLD = 1024 * 1024
# fmt: off
LFS_SUFFIXES = frozenset({
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".gguf", ".h5", ".msgpack", ".model",
    ".pdparams", ".pdiparams", ".npy", ".npz", ".pkl", ".tar", ".zip", ".gz", ".tflite",
})
# fmt: on

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class MirrorFile:
    path: str  # repo-relative, "/"-separated
    size: int
    sha256: str
    source: Path  # where the bytes are on disk


@dataclass
class MirrorRepo:
    repo_id: str
    commit: str
    files: list[MirrorFile]
    branches: dict[str, str]  # ref name -> commit, e.g. {"main": commit}


def is_lfs(f: MirrorFile) -> bool:
    return f.size >= LFS_THRESHOLD or PurePosixPath(f.path).suffix.lower() in LFS_SUFFIXES


def lfs_pointer(f: MirrorFile) -> bytes:
    """The git-lfs pointer file git stores instead of the content (its sha1 is the tree oid)."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{f.sha256}\nsize {f.size}\n".encode()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def git_blob_sha1_of_file(path: Path, size: int) -> str:
    """git's object id of a file's content, streamed (the Hub's ETag for non-LFS files)."""
    digest = hashlib.sha1(b"blob %d\0" % size)
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def sha256_of_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def commit_for(files: Iterable[MirrorFile]) -> str:
    """Deterministic fake commit id: same listing, same commit, whatever the machine."""
    digest = hashlib.sha1()
    for f in sorted(files, key=lambda f: f.path):
        digest.update(f"{f.path}\0{f.size}\0{f.sha256}\n".encode())
    return digest.hexdigest()


def repo_from_dir(repo_id: str, directory: Path, branches: Iterable[str] = ("main",)) -> MirrorRepo:
    """Serve every regular file under `directory` (except `.git/`) as one repo revision."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(directory)
    files = [
        MirrorFile(
            path=p.relative_to(directory).as_posix(),
            size=p.stat().st_size,
            sha256=sha256_of_file(p),
            source=p,
        )
        for p in sorted(directory.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(directory).parts[:1]
    ]
    commit = commit_for(files)
    return MirrorRepo(repo_id=repo_id, commit=commit, files=files, branches={b: commit for b in branches})


def list_tree(files: Iterable[MirrorFile], prefix: str, recursive: bool) -> tuple[list[str], list[MirrorFile]] | None:
    """Directories and files under folder `prefix` ("" = root), as a tree listing shows them.

    None when `prefix` is not a folder of the repo.
    """
    prefix = prefix.strip("/")
    files = list(files)
    dirs = {str(parent) for f in files for parent in PurePosixPath(f.path).parents if str(parent) != "."}
    if prefix and prefix not in dirs:
        return None

    def parent(path: str) -> str:
        p = str(PurePosixPath(path).parent)
        return "" if p == "." else p

    def under(path: str) -> bool:
        if recursive:
            return not prefix or path.startswith(prefix + "/")
        return parent(path) == prefix

    return sorted(d for d in dirs if under(d)), sorted((f for f in files if under(f.path)), key=lambda f: f.path)
