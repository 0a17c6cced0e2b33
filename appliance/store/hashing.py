"""sha256 of files at disk speed: large reads into a reused buffer, many files hashed in parallel.

hashlib releases the GIL while hashing, so a thread pool uses every core without processes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CHUNK = 1 << 20  # 1 MiB: big enough to amortise syscalls, small enough to stay in L2/L3


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while n := handle.readinto(buffer):
            digest.update(view[:n])
            if progress:
                progress(n)
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file (the `oid` a hub lists for files that are not in LFS)."""
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class HashingWriter:
    """A file-like sink that hashes what it writes (copies hash while they copy)."""

    def __init__(self, handle) -> None:  # type: ignore[no-untyped-def]
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)


def sha256_many(
    paths: Iterable[Path], workers: int, progress: Callable[[int], None] | None = None
) -> Iterator[tuple[Path, str | OSError]]:
    """Hash files in parallel, yielding (path, hexdigest or the OSError that stopped it)."""

    def one(path: Path) -> tuple[Path, str | OSError]:
        try:
            return path, sha256_file(path, progress)
        except OSError as exc:
            return path, exc

    # Largest first, so one big file does not start last and leave a core idle at the end.
    ordered = sorted(paths, key=lambda p: p.stat().st_size if p.exists() else 0, reverse=True)
    if workers <= 1 or len(ordered) <= 1:
        yield from map(one, ordered)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sha256")
    try:
        yield from pool.map(one, ordered)
    finally:
        # Ctrl-C (or a consumer that stops early): drop the queued files rather than hash them all.
        pool.shutdown(wait=False, cancel_futures=True)
