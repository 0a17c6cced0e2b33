"""Docker Engine ≥ 25 saves an OCI image layout (index.json, oci-layout, blobs/sha256/<hex>: the
config without `.json`) with Docker's legacy manifest.json beside it (DESIGN §12). No Docker 25 runs
here, so the archive is made in exactly that layout by real tools: skopeo writes the OCI layout of
an image, then Docker's manifest.json (and `repositories`) is added as Docker 25 writes it."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from appliance.errors import BundleError
from appliance.image.bundle import archive_name, verify, write_bundle
from appliance.manifest import Catalog
from tests.conftest import REPO
from tests.image_support import docker_archive, flip_byte

MODELS = ["tiny-paddleocr-vl", "tiny-dots-ocr", "tiny-qwen3-vl"]
REF = "localhost/ocr-appliance:tiny-cpu"


def docker25_archive(legacy: Path, out: Path, work: Path) -> dict[str, object]:
    """`legacy` (a docker-archive) → skopeo's OCI layout → + Docker's manifest.json → tar `out`."""
    layout = work / "layout"
    # Docker 25 stores layers uncompressed (blob digest = diff id), as the legacy shape does.
    cmd = ["skopeo", "copy", "--quiet", "--dest-oci-accept-uncompressed-layers"]
    subprocess.run([*cmd, f"docker-archive:{legacy}", f"oci:{layout}:{REF}"], check=True, capture_output=True)
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs/sha256" / digest).read_text())
    blob = "blobs/sha256/{}".format
    docker_manifest = [{
        "Config": blob(manifest["config"]["digest"].split(":")[1]),
        "RepoTags": [REF],
        "Layers": [blob(layer["digest"].split(":")[1]) for layer in manifest["layers"]],
        "LayerSources": {},
    }]  # fmt: skip
    (layout / "manifest.json").write_text(json.dumps(docker_manifest))
    (layout / "repositories").write_text(json.dumps({REF.rsplit(":", 1)[0]: {"tiny-cpu": digest}}))
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout)), recursive=False)
    return manifest


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    legacy = tmp_path / "legacy.tar"
    docker_archive(legacy, MODELS)
    dist = tmp_path / "dist"
    dist.mkdir()
    docker25_archive(legacy, dist / archive_name("tiny-cpu"), tmp_path)
    return dist


def test_bundle_reads_the_oci_layout_shape(dist: Path) -> None:
    catalog = Catalog(REPO / "manifests")
    archive = dist / archive_name("tiny-cpu")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"index.json", "oci-layout", "manifest.json"} <= names
    assert not any(n.startswith("blobs/") and n.endswith(".json") for n in names)  # the config is a bare blob
    saved = write_bundle(catalog, "tiny-cpu", archive, REF)
    data = saved.bundle
    assert data["archive"]["format"] == "oci-layout"
    roles = [layer["role"] for layer in data["layers"]]
    assert roles == ["base", "setup", "setup", "model", "model", "model", "deps", "code"]
    assert [la["model"] for la in data["layers"] if la["role"] == "model"] == MODELS
    assert all(layer["size"] for layer in data["layers"])  # the one-model-update accounting reads these
    assert set(data["models"]) == set(MODELS)
    report = verify(dist)
    assert report.size == archive.stat().st_size


def test_a_flipped_byte_in_a_model_blob_is_refused(dist: Path) -> None:
    catalog = Catalog(REPO / "manifests")
    archive = dist / archive_name("tiny-cpu")
    saved = write_bundle(catalog, "tiny-cpu", archive, REF)
    layer = saved.bundle["models"]["tiny-dots-ocr"]["layer"].split(":")[1]
    with tarfile.open(archive) as tar:
        member = tar.getmember(f"blobs/sha256/{layer}")
        offset = member.offset_data + member.size // 2
    flip_byte(archive, offset)
    with pytest.raises(BundleError, match=r"ocr-appliance-tiny-cpu\.tar"):
        verify(dist)
