"""The generated tiny models as hub repos, served by the mirror (`appliance testing tiny-hub`)."""

from __future__ import annotations

from pathlib import Path

from appliance.manifest import Catalog
from appliance.mirror import MirrorRepo, repo_from_dir

TINY_PROFILE = "tiny-cpu"


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

    from appliance.mirror import HubMirror
    from appliance.store.fetch import FetchOptions, fetch_model

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
