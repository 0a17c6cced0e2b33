"""`appliance image save` and `appliance bundle verify`: the tarball that crosses the air gap.

    dist/<image>-<profile>.tar   docker-archive (`podman save --format docker-archive`: byte-reproducible)
    dist/bundle.json             image ref and id, every layer (role, model, digest, size), each
                                 model's layer digest and lock digest, disk needs, probe values
    dist/sbom.cdx.json           CycloneDX SBOM of the image (sbom.py)
    dist/bundle.dsse.json        the bundle manifest signed with the offline key (release.py), with --sign
    dist/SHA256SUMS              every file above, `sha256sum -c` format

`verify` runs on the isolated host before anything is loaded: the sums, the bundle, and the
archive's own structure (each layer's bytes hash to the diff id the image config names, each model
layer of bundle.json is in the manifest), all in one read of the tar.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.errors import BundleError, ImageError, LockError, SigningError
from appliance.image import dockerfile, release
from appliance.image.archive import (
    ArchiveScan,
    Layer,
    cache_layers,
    labels_of,
    layers_of,
    model_layers,
    models_of,
    scan_archive,
    warm_of,
)
from appliance.image.layout import BASE_LABEL, BUILDER_LABEL, REPRODUCIBLE_LABEL
from appliance.image.tools import run
from appliance.manifest import Catalog
from appliance.probes import probe_values
from appliance.store.hashing import sha256_file
from appliance.store.lock import read_lock, write_atomic

BUNDLE_VERSION = 1
BUNDLE_JSON = "bundle.json"
SUMS = "SHA256SUMS"
# `docker load` unpacks every layer next to the tar it reads, and a containerd image store keeps
# the layer blobs as well: free space of about 2x the tar is the minimum, 3x is comfortable.
LOAD_FACTOR_MIN = 2
LOAD_FACTOR = 3


def archive_name(profile: str) -> str:
    return f"{dockerfile.IMAGE_NAME.rsplit('/', 1)[-1]}-{profile}.tar"


def _layers(scan: ArchiveScan) -> list[Layer]:
    config, manifest = scan.config or {}, scan.manifest or {}
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    layers = layers_of(diff_ids, config.get("history", []), models_of(config), warm_of(config))
    files = manifest.get("Layers", [])
    sizes = [scan.members.get(scan.resolve(f), ("", None))[1] for f in files]
    if len(sizes) != len(layers):
        return layers
    return [
        Layer(la.index, la.diff_id, la.created_by, la.role, la.model, size)
        for la, size in zip(layers, sizes, strict=True)
    ]


def bundle_data(scan: ArchiveScan, ref: str, catalog: Catalog, profile_name: str) -> dict[str, Any]:
    profile = catalog.profile(profile_name)
    layers = _layers(scan)
    by_model, caches = model_layers(layers), cache_layers(layers)
    models = {}
    for manifest in catalog.profile_models(profile.name):
        lock = read_lock(catalog.lock_path(manifest.name))
        layer = by_model.get(manifest.name)
        if lock is None or layer is None:
            raise LockError(f"{manifest.name}: no lock or no layer in {scan.path.name}")
        models[manifest.name] = {
            "layer": layer.diff_id,
            "layer_size": layer.size,
            "lock_digest": lock.digest,
            "commit": lock.commit,
            "source": lock.source,
            "files": len(lock.files),
            "bytes": lock.total_size,
        }
        if cache := caches.get(manifest.name):  # `appliance image warm`: its compile cache, a layer of its own
            models[manifest.name] |= {"cache_layer": cache.diff_id, "cache_layer_size": cache.size}
    config_name = scan.config_name or ""
    return {
        "bundle_version": BUNDLE_VERSION,
        "appliance_version": __version__,
        "image": ref,
        "image_id": "sha256:" + config_name.removesuffix(".json").rsplit("/", 1)[-1],
        "profile": profile.name,
        "base_image": labels_of(scan.config or {}).get(BASE_LABEL, profile.base_image),
        "archive": {"file": scan.path.name, "format": archive_format(scan), "size": scan.size, "sha256": scan.sha256},
        "build": build_record(labels_of(scan.config or {})),
        "disk": {
            "archive_bytes": scan.size,
            "layer_bytes": sum(la.size or 0 for la in layers),
            "load_free_bytes_min": LOAD_FACTOR_MIN * scan.size,
            "load_free_bytes": LOAD_FACTOR * scan.size,
        },
        "models": models,
        "layers": [la.to_dict() for la in layers],
        "probes": probe_values(catalog, profile).to_dict(),
    }


def archive_format(scan: ArchiveScan) -> str:
    """`docker-archive`, or `oci-layout` for Docker Engine ≥ 25's save (index.json + blobs/ beside
    the same manifest.json)."""
    return "oci-layout" if "index.json" in scan.members and "oci-layout" in scan.members else "docker-archive"


def build_record(labels: dict[str, str]) -> dict[str, Any]:
    """Which builder made the image and whether its layers are reproducible (same lock → same digest)."""
    reproducible = labels.get(REPRODUCIBLE_LABEL)
    return {
        "builder": labels.get(BUILDER_LABEL, "unknown"),
        "reproducible_layers": None if reproducible is None else reproducible == "true",
    }


@dataclass(frozen=True)
class SaveResult:
    archive: Path
    bundle: dict[str, Any]
    sums: Path


def save(
    catalog: Catalog,
    profile_name: str,
    dist: Path,
    *,
    ref: str | None = None,
    builder: str = "buildah",
    key: Path | None = None,
    stamp: int | None = None,
) -> SaveResult:
    """Save the image as dist/<image>-<profile>.tar, then write bundle.json, the SBOM, the signed
    manifest (with a key) and SHA256SUMS."""
    ref = ref or dockerfile.image_ref(profile_name)
    dist.mkdir(parents=True, exist_ok=True)
    archive = dist / archive_name(profile_name)
    partial = archive.with_name(archive.name + ".partial")
    partial.unlink(missing_ok=True)
    if builder == "docker":
        cmd = ["docker", "save", "-o", str(partial), ref]
    else:
        cmd = ["podman", "save", "--format", "docker-archive", "-o", str(partial), ref]
    try:
        run(cmd, f"saving {ref}", quiet=True)
        os.replace(partial, archive)
    finally:
        partial.unlink(missing_ok=True)
    result = write_bundle(catalog, profile_name, archive, ref)
    write_release(result, catalog, key, release.release_stamp() if stamp is None else stamp)
    return result


def write_release(result: SaveResult, catalog: Catalog, key: Path | None, stamp: int) -> dict[str, Any] | None:
    """The SBOM beside the bundle, and with a key the signed manifest; returns the signed statement."""
    from appliance.image.sbom import SBOM_FILE, build_sbom

    dist = result.archive.parent
    write_atomic(dist / SBOM_FILE, build_sbom(result.archive, result.bundle, catalog, stamp))
    (dist / release.ENVELOPE).unlink(missing_ok=True)  # never leave a signature of an earlier save
    if key is None:
        with open(dist / SUMS, "a") as sums:
            sums.write(f"{sha256_file(dist / SBOM_FILE)}  {SBOM_FILE}\n")
        return None
    return release.sign_dist(dist, key, stamp, [SBOM_FILE])


def write_bundle(catalog: Catalog, profile_name: str, archive: Path, ref: str) -> SaveResult:
    """bundle.json and SHA256SUMS beside a saved docker-archive."""
    scan = scan_archive(archive)
    if scan.error or scan.config is None:
        raise ImageError(f"{archive}: the saved archive is unreadable: {scan.error or 'no image config'}")
    data = bundle_data(scan, ref, catalog, profile_name)
    dist = archive.parent
    write_atomic(dist / BUNDLE_JSON, json.dumps(data, indent=2, sort_keys=True) + "\n")
    sums = f"{scan.sha256}  {archive.name}\n{sha256_file(dist / BUNDLE_JSON)}  {BUNDLE_JSON}\n"
    write_atomic(dist / SUMS, sums)
    return SaveResult(archive, data, dist / SUMS)


# --- verify on the isolated host ------------------------------------------------------------------


def _read_sums(path: Path, problems: list[str]) -> dict[str, str]:
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        parts = line.strip().split(maxsplit=1)
        if not line.strip():
            continue
        if len(parts) != 2 or len(parts[0]) != 64:
            problems.append(f"{path.name}: line {number} is not '<sha256>  <file>'")
            continue
        sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


@dataclass(frozen=True)
class VerifyReport:
    archive: Path
    bundle: dict[str, Any]
    size: int
    free_bytes: int | None
    signed: dict[str, Any] | None = None  # the statement, when checked against a key


def verify(target: Path, *, key: Path | None = None, installed: Path | None = None) -> VerifyReport:
    """Check a bundle (its directory, or the tar inside it) before it is loaded; BundleError names every
    bad file. With `key` (the .pub of the offline key) the bundle must be signed by it and every file
    must be the signed one; with `installed` (the host's state directory) it must not be older than
    what was installed there."""
    target = target.resolve()
    dist = target if target.is_dir() else target.parent
    problems: list[str] = []
    signed = None
    if key is not None:
        try:
            signed = release.signed_statement(dist, key)
        except SigningError as exc:
            raise BundleError([str(exc)]) from None
        problems += release.file_problems(signed, dist) + release.replay_problems(signed, installed)
    sums_path, bundle_path = dist / SUMS, dist / BUNDLE_JSON
    missing = [f"{p.name}: missing in {dist}" for p in (sums_path, bundle_path) if not p.is_file()]
    if missing:
        raise BundleError(problems + missing)
    sums = _read_sums(sums_path, problems)
    if BUNDLE_JSON not in sums:
        problems.append(f"{SUMS}: does not list {BUNDLE_JSON}")
    elif (actual := sha256_file(bundle_path)) != sums[BUNDLE_JSON]:
        problems.append(f"{BUNDLE_JSON}: sha256 {actual}, {SUMS} says {sums[BUNDLE_JSON]}")
    try:
        bundle = json.loads(bundle_path.read_text())
        expected = bundle["archive"]
        name, size, sha = expected["file"], int(expected["size"]), expected["sha256"]
        models = {m: v["layer"] for m, v in bundle["models"].items()}
        models |= {f"{m} (compile cache)": v["cache_layer"] for m, v in bundle["models"].items() if "cache_layer" in v}
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError([*problems, f"{BUNDLE_JSON}: unreadable ({type(exc).__name__}: {exc})"]) from None
    archive = dist / name
    if not target.is_dir() and target.name != name:
        problems.append(f"{target.name}: {BUNDLE_JSON} describes {name}, not this file")
    if sums.get(name) != sha:
        problems.append(f"{name}: {SUMS} says {sums.get(name, 'nothing')}, {BUNDLE_JSON} says {sha}")
    if not archive.is_file():
        raise BundleError([*problems, f"{name}: missing in {dist}"])
    actual_size = archive.stat().st_size
    if actual_size != size:
        problems.append(f"{name}: {actual_size} bytes, {BUNDLE_JSON} says {size} (truncated or replaced)")
    scan = scan_archive(archive)
    if scan.sha256 != sha:
        problems.append(f"{name}: sha256 {scan.sha256}, expected {sha}")
    problems += _structure_problems(scan, models, bundle)
    if signed is not None:
        problems += release.archive_problems(signed, name, scan.size, scan.sha256)
    if problems:
        raise BundleError(problems)
    free = _free_bytes(Path("/var/lib/docker")) or _free_bytes(Path("/var/lib/containers"))
    return VerifyReport(archive, bundle, scan.size, free, signed)


def _structure_problems(scan: ArchiveScan, models: dict[str, str], bundle: dict[str, Any]) -> list[str]:
    name = scan.path.name
    if scan.error:
        return [f"{name}: not a complete tar archive ({scan.error})"]
    manifest, config = scan.manifest, scan.config
    if manifest is None or config is None:
        return [f"{name}: no docker-archive manifest.json / image config"]
    problems = []
    config_member = scan.resolve(manifest["Config"])
    config_sha = scan.members.get(config_member, ("?", 0))[0]
    if config_member.rsplit("/", 1)[-1].removesuffix(".json") != config_sha:
        problems.append(f"{name}: {config_member}: sha256 {config_sha} does not match its name")
    if bundle.get("image_id") != f"sha256:{config_sha}":
        problems.append(f"{name}: image id sha256:{config_sha}, {BUNDLE_JSON} says {bundle.get('image_id')}")
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    files = manifest.get("Layers", [])
    if len(files) != len(diff_ids):
        problems.append(f"{name}: manifest lists {len(files)} layers, the image config {len(diff_ids)}")
    present = set()
    for index, (file, diff_id) in enumerate(zip(files, diff_ids, strict=False)):
        member = scan.members.get(scan.resolve(file))
        if member is None:
            problems.append(f"{name}: layer {index} ({file}) is missing")
            continue
        present.add(f"sha256:{member[0]}")
        if f"sha256:{member[0]}" != diff_id:
            problems.append(f"{name}: layer {index} ({file}) has sha256:{member[0]}, the image config says {diff_id}")
    for model, digest in sorted(models.items()):
        if digest not in diff_ids or digest not in present:
            problems.append(f"{name}: the layer of model {model} ({digest}) is not in the archive")
    return problems


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None
