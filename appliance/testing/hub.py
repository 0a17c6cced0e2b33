"""Glue between the store and the mirror: serve a verified store, or the generated tiny models."""

from __future__ import annotations

from pathlib import Path

from appliance.errors import VerifyError
from appliance.manifest import Catalog
from appliance.store.lock import read_lock
from appliance.store.verify import verify_fast
from appliance.testing.mirror import MirrorFile, MirrorRepo, repo_from_dir

TINY_PROFILE = "tiny-cpu"


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


def tiny_repos(out_root: Path, catalog: Catalog, seed: int = 0) -> list[MirrorRepo]:
    """Generate the tiny-cpu profile's models and describe them as hub repos (HF and ModelScope)."""
    from appliance.testing.tiny import generate

    repos = []
    for manifest in catalog.profile_models(TINY_PROFILE):
        directory = out_root / manifest.name
        generate(manifest.engine, directory, seed=seed)
        # `main` for Hugging Face clients, `master` for ModelScope's default.
        repos.append(repo_from_dir(manifest.source.location, directory, branches=("main", "master")))
    return repos


def relock_tiny(catalog: Catalog, store: Path, work: Path) -> list[str]:
    """After a change to the generator: pin the tiny manifests to the new commits and rewrite their
    locks by fetching through the mirror (the same path CI takes). Returns the models changed."""
    import os
    import re

    from appliance.store.fetch import FetchOptions, fetch_model
    from appliance.testing.mirror import HubMirror

    repos = tiny_repos(work, catalog)
    changed = []
    for manifest, repo in zip(catalog.profile_models(TINY_PROFILE), repos, strict=True):
        path = catalog.models_dir / f"{manifest.name}.yaml"
        text = path.read_text()
        new = re.sub(r"(?m)^revision: .*$", f"revision: {repo.commit}", text)
        if new != text:
            path.write_text(new)
            changed.append(manifest.name)
    fresh = Catalog(catalog.root)
    with HubMirror(repos) as mirror:
        saved = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "MODELSCOPE_ENDPOINT")}
        os.environ.update(HF_ENDPOINT=mirror.url, MODELSCOPE_ENDPOINT=mirror.url)
        try:
            for manifest in fresh.profile_models(TINY_PROFILE):
                fetch_model(manifest, fresh.lock_path(manifest.name), store, FetchOptions(upgrade=True))
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return changed
