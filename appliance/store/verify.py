"""Is a model directory exactly what its lock says?

`verify_fast` (every boot): file set and sizes, from one directory walk and a stat per file —
sub-second for any store size. `verify_deep`: re-hash every file, in parallel.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from appliance import constants
from appliance.errors import IntegrityError
from appliance.store.hashing import sha256_many
from appliance.store.lock import Lock


class Walk(NamedTuple):
    files: dict[str, os.stat_result]  # regular files: relative POSIX path → stat
    odd: list[str]  # symlinks, FIFOs, sockets, devices
    dirs: list[str]  # every folder below the root


def walk_files(root: Path) -> Walk:
    """One pass over `root`, links not followed. OSError (e.g. a folder that cannot be read) escapes."""
    walk = Walk({}, [], [])
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(root / rel_dir if rel_dir else root) as entries:
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if entry.is_symlink():
                    walk.odd.append(rel)
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(rel)
                    walk.dirs.append(rel)
                elif entry.is_file(follow_symlinks=False):
                    walk.files[rel] = entry.stat(follow_symlinks=False)
                else:
                    walk.odd.append(rel)
    return walk


def verify_fast(model_dir: Path, lock: Lock) -> list[IntegrityError]:
    name = lock.model
    if not model_dir.is_dir():
        return [IntegrityError(name, str(model_dir), "model directory is missing")]
    # The lock validated its own digest on load; a lock built in memory is checked here too.
    problems: list[IntegrityError] = []
    try:
        on_disk, odd, dirs = walk_files(model_dir)
    except OSError as exc:  # one line naming the folder, not a traceback
        return [IntegrityError(name, str(exc.filename or model_dir), f"cannot read: {exc.strerror}")]
    for rel in sorted(odd):
        problems.append(IntegrityError(name, rel, "is a symlink or special file, not a regular file"))
    for locked in lock.files:
        st = on_disk.pop(locked.path, None)
        if st is None:
            if locked.path in dirs:
                problems.append(IntegrityError(name, locked.path, "is a folder, not a file"))
            elif locked.path not in odd:
                problems.append(IntegrityError(name, locked.path, "missing"))
        elif st.st_size != locked.size:
            problem = f"size {st.st_size} bytes, lock says {locked.size} (truncated or replaced)"
            problems.append(IntegrityError(name, locked.path, problem))
    for rel in sorted(on_disk):
        problems.append(IntegrityError(name, rel, "extra file, not in the lock"))
    # A folder no locked file lives in (an empty one, or one only extra files fill) is extra too.
    wanted = {str(parent) for f in lock.files for parent in PurePosixPath(f.path).parents}
    extra = set(dirs) - wanted
    for rel in sorted(extra):
        reported = str(PurePosixPath(rel).parent) in extra or any(
            p.path == rel or p.path.startswith(rel + "/") for p in problems
        )
        if not reported:
            problems.append(IntegrityError(name, rel + "/", "extra folder, not in the lock"))
    return problems


def verify_deep(
    model_dir: Path,
    lock: Lock,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[IntegrityError]:
    """Fast checks, then the sha256 of every file whose size is right."""
    problems = verify_fast(model_dir, lock)
    bad = {p.path for p in problems}
    expected = {model_dir / f.path: f for f in lock.files if f.path not in bad}
    for path, result in sha256_many(expected, workers or constants.hash_workers(), progress):
        locked = expected[path]
        if isinstance(result, OSError):
            problems.append(IntegrityError(lock.model, locked.path, f"cannot read: {result.strerror}"))
        elif result != locked.sha256:
            problems.append(IntegrityError(lock.model, locked.path, f"sha256 {result}, lock says {locked.sha256}"))
    return sorted(problems, key=lambda p: p.path)
