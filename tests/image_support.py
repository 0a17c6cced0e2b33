"""Helpers of the image tests: small dir:-sourced models in a throw-away catalog, synthetic docker-archives."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from appliance.image.bases import CI_BASE_IMAGE
from appliance.image.bundle import archive_name
from appliance.image.dockerfile import image_ref
from appliance.manifest import Catalog
from appliance.store.fetch import FetchOptions, fetch_model
from tests.conftest import REPO, ManifestDir, make_files

MODEL = """
engine: paddle-layout
source: dir:{src}
resources: {{weight_bytes: 1, cold_start_seconds: 10}}
"""


def small_models(
    manifests: ManifestDir, root: Path, models: dict[str, dict[str, bytes]], profile: str = "small"
) -> Catalog:
    """Models with dir: sources, fetched into root/store (locks written), and a profile carrying them."""
    for name, files in models.items():
        src = root / "src" / name
        shutil.rmtree(src, ignore_errors=True)
        make_files(src, files)
        manifests.model(name, MODEL.format(src=src))
    entries = "".join(f"  - {{model: {name}}}\n" for name in models)
    manifests.profile(profile, f"target: {{device: cpu}}\nbase_image: {CI_BASE_IMAGE}\nmodels:\n{entries}")
    catalog = manifests.catalog()
    for name in models:
        fetch_model(catalog.model(name), catalog.lock_path(name), root / "store", FetchOptions())
    return catalog


def refetch(catalog: Catalog, root: Path, name: str, files: dict[str, bytes]) -> None:
    """Replace a model's content: new source files, new lock, new store copy."""
    manifest = catalog.model(name)
    src = Path(manifest.source.location)
    shutil.rmtree(src)
    make_files(src, files)
    catalog.lock_path(name).unlink()
    shutil.rmtree(root / "store" / name)
    fetch_model(manifest, catalog.lock_path(name), root / "store", FetchOptions())


def random_files(seed: int, size: int = 50_000) -> dict[str, bytes]:
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32)
    return {"config.json": b'{"seed": %d}' % seed, "weights/model.bin": data}


# --- synthetic docker-archives --------------------------------------------------------------------


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def docker_archive(path: Path, models: list[str], *, ref: str = "localhost/ocr-appliance:tiny-cpu") -> list[bytes]:
    """A docker-archive shaped like a Dockerfile.offline image: base, tini, user, one layer per model,
    deps, code. Returns the layer blobs."""
    layers = [
        layer_tar({"bin/sh": b"base" * 1000}),
        layer_tar({"usr/local/bin/tini": b"tini"}),
        layer_tar({"etc/passwd": b"appliance:x:10001"}),
        *[layer_tar({f"models/{m}/model.bin": m.encode() * 5000}) for m in models],
        layer_tar({"opt/appliance/venv/deps": b"deps"}),
        layer_tar({"opt/appliance/venv/code": b"code"}),
    ]
    return offline_archive(path, layers, models, ref)


def offline_archive(path: Path, layers: list[bytes], models: list[str], ref: str) -> list[bytes]:
    """Write `layers` (base, tini, user, one per model, deps, code) as a docker-archive with the
    history and models label Dockerfile.offline gives them. Returns the layer blobs."""
    history = [
        {"created_by": "/bin/sh -c #(nop) ADD file:abc in / "},
        {"created_by": "/bin/sh -c #(nop) ENV PATH=/bin", "empty_layer": True},
        {"created_by": "/bin/sh -c #(nop) COPY file:def in /usr/local/bin/tini "},
        {"created_by": "/bin/sh -c set -eu; appliance:x:10001"},
        *[{"created_by": "/bin/sh -c #(nop) COPY dir:123 in / "} for _ in models],
        {"created_by": "/bin/sh -c #(nop) COPY dir:456 in /opt/appliance/venv "},
        {"created_by": "/bin/sh -c #(nop) COPY dir:789 in / "},
        {"created_by": "/bin/sh -c #(nop) CMD", "empty_layer": True},
    ]
    config = {
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{_sha(la)}" for la in layers]},
        "history": history,
        "config": {"Labels": {"appliance.models": ",".join(models)}},
    }
    write_archive(path, layers, json.dumps(config).encode(), ref)
    return layers


def write_archive(path: Path, layers: list[bytes], config: bytes, ref: str, order: list[int] | None = None) -> None:
    names = [f"{_sha(la)}.tar" for la in layers]
    manifest = [{"Config": f"{_sha(config)}.json", "RepoTags": [ref], "Layers": names}]
    if order is not None:
        manifest[0]["Layers"] = [names[i] for i in order]
    members = [*zip(names, layers, strict=True), (f"{_sha(config)}.json", config)]
    members.append(("manifest.json", json.dumps(manifest).encode()))
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def resum(dist: Path, archive: Path) -> None:
    """Rewrite bundle.json's archive entry and SHA256SUMS for a changed tar (what a careless copy
    tool or a hand "fix" would do): only the archive's own structure can still tell."""
    bundle = json.loads((dist / "bundle.json").read_text())
    data = archive.read_bytes()
    bundle["archive"].update(size=len(data), sha256=_sha(data))
    (dist / "bundle.json").write_text(json.dumps(bundle, indent=2, sort_keys=True) + "\n")
    sums = f"{_sha(data)}  {archive.name}\n{_sha((dist / 'bundle.json').read_bytes())}  bundle.json\n"
    (dist / "SHA256SUMS").write_text(sums)


def offset_of(archive: Path, needle: bytes) -> int:
    data = archive.read_bytes()
    offset = data.find(needle)
    assert offset >= 0
    return offset


def storage_conf(root: Path) -> Path:
    """A containers-storage configuration of its own (CONTAINERS_STORAGE_CONF): tests never touch the
    machine's images, and removing the directory removes everything they made."""
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "graph"}"\nrunroot = "{root / "run"}"\n')
    os.chmod(conf, 0o644)
    return conf


# The container storage `make offline-image` used, as the test process found it (.ci/run sets one; else
# the machine's default) — captured before any fixture points the tests at a storage of their own.
MAIN_JOB_STORAGE = os.environ.get("CONTAINERS_STORAGE_CONF")


def use_main_job_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    if MAIN_JOB_STORAGE:
        monkeypatch.setenv("CONTAINERS_STORAGE_CONF", MAIN_JOB_STORAGE)
    else:
        monkeypatch.delenv("CONTAINERS_STORAGE_CONF", raising=False)


def _main_job_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CONTAINERS_STORAGE_CONF"}
    return env | ({"CONTAINERS_STORAGE_CONF": MAIN_JOB_STORAGE} if MAIN_JOB_STORAGE else {})


def main_job_dist(profile: str = "tiny-cpu") -> Path:
    """The dist/ bundle `make offline-image` saved (the README runs it before the tests) and the warmed
    image it came from, still in the container storage; made here — once, under a lock, as the tests
    run on two workers — when either is missing."""
    dist = REPO / "dist"
    lock = REPO / "work" / "main-job.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        exists = ["podman", "image", "exists", image_ref(profile)]
        in_storage = subprocess.run(exists, env=_main_job_env(), capture_output=True).returncode == 0
        if not (dist / archive_name(profile)).is_file() or not in_storage:
            steps = ["store", "verify", "image", "warm", "save"]
            make = ["make", "-C", str(REPO), *steps, f"PROFILE={profile}"]
            subprocess.run(make, check=True, env=_main_job_env())
    return dist
