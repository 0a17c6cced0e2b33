"""Delta bundles of real images (slow, small): three tiny Dockerfile.offline-shaped images built by
buildah FROM scratch (v1; v2 = one model changed; v3 = code changed), saved signed with podman as
docker-archives; the deltas v1→v2 and v2→v3 rebuild tars byte-identical to the full saves, and
`podman load` loads them as the same image."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.image import bundle, signing
from appliance.image.delta import LAYERS_DIR, apply, make_delta
from appliance.manifest import Catalog
from appliance.store.lock import read_lock
from tests.conftest import REPO, ManifestDir
from tests.docker_support import private_dockerd
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


@dataclass(frozen=True)
class Rebuilt:
    root: Path
    bundles: dict[str, dict]  # type: ignore[type-arg]  # v1, v2, v3 → bundle.json data
    shipped: dict[str, str]  # d2, d3 → the one layer each delta ships
    model_bytes: int  # of the updated model, from its lock


@pytest.fixture(scope="module")
def rebuilt(containers: Path, tmp_path_factory: pytest.TempPathFactory) -> Rebuilt:
    """v1; v2 = one model changed; v3 = code changed: full signed saves, deltas d2 (v1→v2) and d3
    (v2→v3) made from them and applied (d2, d3 then hold the rebuilt tars)."""
    root = tmp_path_factory.mktemp("delta-images")
    key = signing.new_key(root / "signing.key").private
    pub = signing.public_path(key)
    catalog = small_models(ManifestDir(root / "manifests"), root, {"m1": random_files(1), "m2": random_files(2)})
    _build(root / "ctx", root / "store", b"v1")
    bundles = {"v1": _save(catalog, root / "v1", key, 1000)}
    refetch(catalog, root, "m2", random_files(3, size=80_000))
    _build(root / "ctx", root / "store", b"v1")
    bundles["v2"] = _save(catalog, root / "v2", key, 2000)
    _build(root / "ctx", root / "store", b"v2 code")
    bundles["v3"] = _save(catalog, root / "v3", key, 3000)
    shipped = {}
    for old, new, full in (("v1", "d2", "v2"), ("v2", "d3", "v3")):
        [shipped[new]] = make_delta(root / full, root / old / "bundle.json", root / new)["shipped_layers"]
        apply(root / old, root / new, pub)
        assert bundle.verify(root / new, key=pub).signed is not None
    lock = read_lock(catalog.lock_path("m2"))
    assert lock is not None
    return Rebuilt(root, bundles, shipped, lock.total_size)


ARCHIVE = bundle.archive_name("small")


def test_one_model_and_code_updates_round_trip(rebuilt: Rebuilt) -> None:
    root, bundles = rebuilt.root, rebuilt.bundles
    assert rebuilt.shipped["d2"] == bundles["v2"]["models"]["m2"]["layer"]
    roles = {la["diff_id"]: la["role"] for la in bundles["v3"]["layers"]}
    assert roles[rebuilt.shipped["d3"]] == "code"
    for delta, full in (("d2", "v2"), ("d3", "v3")):
        assert (root / delta / ARCHIVE).read_bytes() == (root / full / ARCHIVE).read_bytes(), f"{delta} != {full}"
    shipped_bytes = sum(p.stat().st_size for p in (root / "d2" / LAYERS_DIR).iterdir())
    assert shipped_bytes <= rebuilt.model_bytes + 1_000_000, "target: the model's bytes + 1 MB"
    assert len({b["image_id"] for b in bundles.values()}) == 3


@pytest.mark.parametrize("delta", ["d2", "d3"])
def test_rebuilt_archive_loads_with_podman(rebuilt: Rebuilt, delta: str) -> None:
    full = {"d2": "v2", "d3": "v3"}[delta]
    _run("podman", "rmi", "-f", REF)
    _run("podman", "load", "-q", "-i", str(rebuilt.root / delta / ARCHIVE))
    loaded = _run("podman", "image", "inspect", "--format", "{{.Id}}", REF).strip()
    assert f"sha256:{loaded}" == rebuilt.bundles[full]["image_id"]


def test_rebuilt_archive_loads_with_docker_engine(rebuilt: Rebuilt) -> None:
    with private_dockerd("delta") as daemon:
        daemon.docker("load", "-i", str(rebuilt.root / "d3" / ARCHIVE))
        loaded = daemon.docker("image", "inspect", "--format", "{{.Id}}", REF).stdout.strip()
        assert loaded == rebuilt.bundles["v3"]["image_id"]
