"""bundle.json / SHA256SUMS / `bundle verify` on synthetic docker-archives (fast); the real ones are in
test_image_build.py."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance.cli import app
from appliance.errors import BundleError
from appliance.image.archive import layers_of, scan_archive
from appliance.image.bundle import archive_name, verify, write_bundle
from appliance.manifest import Catalog
from appliance.probes import probe_values
from appliance.store.lock import read_lock
from tests.conftest import REPO
from tests.image_support import docker_archive, flip_byte, offset_of, resum, write_archive

MODELS = ["tiny-paddleocr-vl", "tiny-dots-ocr", "tiny-qwen3-vl"]
REF = "localhost/ocr-appliance:tiny-cpu"


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(REPO / "manifests")


@pytest.fixture
def dist(tmp_path: Path, catalog: Catalog) -> Path:
    dist = tmp_path / "dist"
    dist.mkdir()
    docker_archive(dist / archive_name("tiny-cpu"), MODELS)
    write_bundle(catalog, "tiny-cpu", dist / archive_name("tiny-cpu"), REF)
    return dist


def _refused(target: Path, *fragments: str) -> str:
    with pytest.raises(BundleError) as info:
        verify(target)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_bundle_describes_layers_locks_disk_and_probes(dist: Path, catalog: Catalog) -> None:
    bundle = json.loads((dist / "bundle.json").read_text())
    archive = dist / "ocr-appliance-tiny-cpu.tar"
    assert bundle["image"] == REF and bundle["profile"] == "tiny-cpu"
    assert bundle["archive"]["size"] == archive.stat().st_size
    assert bundle["archive"]["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    roles = [layer["role"] for layer in bundle["layers"]]
    assert roles == ["base", "setup", "setup", "model", "model", "model", "deps", "code"]
    assert [layer.get("model") for layer in bundle["layers"][3:6]] == MODELS
    for model in MODELS:
        lock = read_lock(catalog.lock_path(model))
        assert lock is not None
        info = bundle["models"][model]
        assert info["lock_digest"] == lock.digest and info["commit"] == lock.commit
        assert info["layer"] in [layer["diff_id"] for layer in bundle["layers"]]
    assert bundle["disk"]["load_free_bytes"] == 3 * archive.stat().st_size
    assert bundle["disk"]["load_free_bytes_min"] == 2 * archive.stat().st_size
    assert bundle["probes"] == probe_values(catalog, catalog.profile("tiny-cpu")).to_dict()
    sums = (dist / "SHA256SUMS").read_text().splitlines()
    assert [line.split("  ")[1] for line in sums] == [archive.name, "bundle.json"]


def test_intact_bundle_passes_by_dir_or_tar(dist: Path) -> None:
    assert verify(dist).bundle["image"] == REF
    assert verify(dist / "ocr-appliance-tiny-cpu.tar").size > 0


def test_flipped_byte_in_a_model_layer(dist: Path) -> None:
    archive = dist / "ocr-appliance-tiny-cpu.tar"
    flip_byte(archive, offset_of(archive, b"tiny-dots-ocr" * 10) + 7)
    _refused(dist, "ocr-appliance-tiny-cpu.tar: sha256", "layer 4")


def test_flipped_byte_caught_by_structure_even_when_resummed(dist: Path) -> None:
    archive = dist / "ocr-appliance-tiny-cpu.tar"
    flip_byte(archive, offset_of(archive, b"tiny-qwen3-vl" * 10) + 3)
    resum(dist, archive)
    message = _refused(dist, "ocr-appliance-tiny-cpu.tar: layer 5")
    assert "the image config says" in message


def test_truncated_tar(dist: Path) -> None:
    archive = dist / "ocr-appliance-tiny-cpu.tar"
    os.truncate(archive, archive.stat().st_size // 2)
    _refused(dist, "ocr-appliance-tiny-cpu.tar:", "truncated", "not a complete tar archive")


def test_swapped_layer(tmp_path: Path, dist: Path) -> None:
    """A model layer from another build in place of the right one, the tar re-summed."""
    archive = dist / "ocr-appliance-tiny-cpu.tar"
    other = docker_archive(tmp_path / "other.tar", ["tiny-paddleocr-vl", "tiny-dots-ocr", "tiny-qwen3-vx"])
    mine = docker_archive(tmp_path / "mine.tar", MODELS)
    scan = scan_archive(archive)
    config = json.dumps(scan.config).encode()
    swapped = [*mine[:5], other[5], *mine[6:]]
    write_archive(archive, swapped, config, REF)
    resum(dist, archive)
    _refused(dist, "ocr-appliance-tiny-cpu.tar: layer 5", "tiny-qwen3-vl")


def test_reordered_layers(dist: Path, tmp_path: Path) -> None:
    archive = dist / "ocr-appliance-tiny-cpu.tar"
    layers = docker_archive(tmp_path / "mine.tar", MODELS)
    config = json.dumps(scan_archive(archive).config).encode()
    write_archive(archive, layers, config, REF, order=[0, 1, 2, 4, 3, 5, 6, 7])
    resum(dist, archive)
    _refused(dist, "layer 3", "layer 4")


def test_bundle_json_edited(dist: Path) -> None:
    bundle = json.loads((dist / "bundle.json").read_text())
    bundle["models"]["tiny-dots-ocr"]["layer"] = "sha256:" + "0" * 64
    (dist / "bundle.json").write_text(json.dumps(bundle))
    _refused(dist, "bundle.json: sha256")
    resum(dist, dist / "ocr-appliance-tiny-cpu.tar")
    _refused(dist, "the layer of model tiny-dots-ocr (sha256:000")


def test_missing_sums(dist: Path) -> None:
    (dist / "SHA256SUMS").unlink()
    _refused(dist, "SHA256SUMS: missing")


def test_wrong_tar_named(dist: Path, tmp_path: Path) -> None:
    other = dist / "other.tar"
    other.write_bytes((dist / "ocr-appliance-tiny-cpu.tar").read_bytes())
    _refused(other, "other.tar: bundle.json describes ocr-appliance-tiny-cpu.tar")


def test_cli_names_the_file(dist: Path) -> None:
    archive = dist / "ocr-appliance-tiny-cpu.tar"
    ok = CliRunner().invoke(app, ["bundle", "verify", str(dist)])
    assert ok.exit_code == 0, ok.output
    flip_byte(archive, archive.stat().st_size // 3)
    result = CliRunner().invoke(app, ["bundle", "verify", str(dist)])
    assert result.exit_code != 0
    assert "ocr-appliance-tiny-cpu.tar" in str(result.exception)


def test_layer_roles_need_the_dockerfile_shape() -> None:
    history = [
        {"created_by": c} for c in ("ADD x in /", "COPY a in /usr/local/bin/tini", "RUN", "COPY", "COPY", "COPY")
    ]
    diff_ids = [f"sha256:{i}" for i in range(6)]
    layers = layers_of(diff_ids, history, ["m"])
    assert [la.role for la in layers] == ["base", "setup", "setup", "model", "deps", "code"]
    assert layers[3].model == "m"
    assert {la.role for la in layers_of(diff_ids, history, ["m", "n", "o"])} == {"other"}
    # No history (`docker image inspect`): the shape alone decides.
    assert [la.role for la in layers_of(diff_ids, [], ["m"])][2:4] == ["setup", "model"]
    # A history that disagrees with the shape: roles unknown.
    assert {la.role for la in layers_of(diff_ids, history, ["m", "n"])} == {"other"}
