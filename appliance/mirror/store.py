"""Serve a verified store (`appliance mirror serve`): one repo per locked model, at its locked commit."""

from __future__ import annotations

from pathlib import Path

from appliance.errors import VerifyError
from appliance.manifest import Catalog
from appliance.mirror.repo import MirrorFile, MirrorRepo
from appliance.store.lock import read_lock
from appliance.store.verify import verify_fast


def repos_from_store(store: Path, catalog: Catalog) -> list[MirrorRepo]:
    """One repo per locked model present in `store`, at its locked commit, under its source repo id.

    Serving from the lock (not by re-hashing) keeps start-up instant for a 20 GB store; the fast
    verify still refuses to serve a store whose files are missing, extra or of the wrong size.
    """
    repos = []
    problems = []
    for name in catalog.model_names():
        lock = read_lock(catalog.lock_path(name))
        model_dir = store / name
        if lock is None or not model_dir.is_dir():
            continue
        problems += verify_fast(model_dir, lock)
        manifest = catalog.model(name)
        files = [MirrorFile(f.path, f.size, f.sha256, model_dir / f.path) for f in lock.files]
        refs = {ref: lock.commit for ref in {lock.revision or "main", "main", "master"}}
        repos.append(MirrorRepo(manifest.source.location, lock.commit, files, refs))
    if problems:
        raise VerifyError(problems)
    return repos
