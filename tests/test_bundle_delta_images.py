"""Delta bundles of real images (slow, small): three tiny Dockerfile.offline-shaped images built by
buildah FROM scratch (v1; v2 = one model changed; v3 = code changed), saved signed with podman as
docker-archives; the deltas v1→v2 and v2→v3 rebuild tars byte-identical to the full saves, and
`podman load` loads them as the same image."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.image import bundle, signing
from appliance.image.delta import LAYERS_DIR, apply, make_delta
from appliance.manifest import Catalog
from appliance.store.lock import read_lock
from tests.conftest import REPO, ManifestDir
from tests.image_support import random_files, refetch, small_models, storage_conf

pytestmark = pytest.mark.slow

REF = "localhost/supply-delta:small"
CONTAINERFILE = """FROM scratch
COPY base /
COPY tini /usr/local/bin/tini
COPY etc /etc
COPY m1 /models/m1
COPY m2 /models/m2
COPY venv /opt/appliance/venv
COPY code /opt/appliance/code
LABEL appliance.models=m1,m2
"""


@pytest.fixture(scope="module")
def containers() -> Iterator[Path]:
    missing = [t for t in ("buildah", "podman") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)} (.ci/run installs them)")
    conf = os.environ.get("CONTAINERS_STORAGE_CONF")
    path = Path(conf) if conf else storage_conf(REPO / "work" / "test-containers")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONTAINERS_STORAGE_CONF", str(path))
        yield path
        subprocess.run(["podman", "rmi", "-f", REF], capture_output=True, check=False)


def _run(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr[-2000:]}"
    return done.stdout


def _build(ctx: Path, store: Path, code: bytes) -> None:
    shutil.rmtree(ctx, ignore_errors=True)
    for name, data in {"base/bin/sh": b"base" * 50_000, "tini": b"tini", "etc/passwd": b"appliance:x:10001\n",
                       "venv/lib/python3.11/site-packages/x-1.0.dist-info/METADATA": b"Name: x\nVersion: 1.0\n",
                       "code/app.py": code}.items():  # fmt: skip
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_bytes(data)
    for model in ("m1", "m2"):
        shutil.copytree(store / model, ctx / model)
    (ctx / "Containerfile").write_text(CONTAINERFILE)
    _run("buildah", "bud", "--isolation", "chroot", "--layers", "--timestamp", "0", "-q", "-f",
         str(ctx / "Containerfile"), "-t", REF, str(ctx))  # fmt: skip


def _save(catalog: Catalog, dist: Path, key: Path, stamp: int) -> dict:  # type: ignore[type-arg]
    return bundle.save(catalog, "small", dist, ref=REF, builder="buildah", key=key, stamp=stamp).bundle


def test_one_model_and_code_updates_round_trip_and_load(
    containers: Path, tmp_path: Path, manifests: ManifestDir
) -> None:
    key = signing.new_key(tmp_path / "signing.key").private
    pub = signing.public_path(key)
    catalog = small_models(manifests, tmp_path, {"m1": random_files(1), "m2": random_files(2)})
    store = tmp_path / "store"
    _build(tmp_path / "ctx", store, b"v1")
    v1 = _save(catalog, tmp_path / "v1", key, 1000)
    refetch(catalog, tmp_path, "m2", random_files(3, size=80_000))
    _build(tmp_path / "ctx", store, b"v1")
    v2 = _save(catalog, tmp_path / "v2", key, 2000)
    _build(tmp_path / "ctx", store, b"v2 code")
    v3 = _save(catalog, tmp_path / "v3", key, 3000)
    archive = bundle.archive_name("small")
    for old, new, full, changed in (("v1", "d2", "v2", v2["models"]["m2"]["layer"]), ("v2", "d3", "v3", None)):
        delta = make_delta(tmp_path / full, tmp_path / old / "bundle.json", tmp_path / new)
        [shipped] = delta["shipped_layers"]
        layers = json.loads((tmp_path / full / "bundle.json").read_text())["layers"]
        roles = {la["diff_id"]: la["role"] for la in layers}
        assert roles[shipped] == ("model" if changed else "code")
        assert changed in (None, shipped)
        rebuilt = apply(tmp_path / old, tmp_path / new, pub)
        assert rebuilt.read_bytes() == (tmp_path / full / archive).read_bytes(), f"{old} + {new} != {full}"
        assert bundle.verify(tmp_path / new, key=pub).signed is not None
    lock = read_lock(catalog.lock_path("m2"))
    assert lock is not None
    shipped_bytes = sum(p.stat().st_size for p in (tmp_path / "d2" / LAYERS_DIR).iterdir())
    assert shipped_bytes <= lock.total_size + 1_000_000, "target: the model's bytes + 1 MB"
    # The rebuilt archive loads as the very image that was saved.
    _run("podman", "rmi", "-f", REF)
    _run("podman", "load", "-q", "-i", str(tmp_path / "d3" / archive))
    loaded = _run("podman", "image", "inspect", "--format", "{{.Id}}", REF).strip()
    assert f"sha256:{loaded}" == v3["image_id"]
    assert v1["image_id"] != v2["image_id"] != v3["image_id"]
