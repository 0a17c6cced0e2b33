"""dist/sbom.cdx.json: what the image carries (read from its layers, whiteouts applied) and every model
from its lock; valid CycloneDX 1.6 (the library's own schema validator)."""

from __future__ import annotations

import json
from pathlib import Path

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from appliance.image.archive import read_image_files
from appliance.image.sbom import _licenses
from appliance.manifest import Catalog
from appliance.store.lock import read_lock
from tests.conftest import REPO
from tests.supply_support import MODELS, SITE, VENV, signed_dist


def test_sbom_describes_the_image_not_the_host(tmp_path: Path) -> None:
    catalog = Catalog(REPO / "manifests")
    signed_dist(tmp_path, catalog, None, stamp=1_700_000_000)
    text = (tmp_path / "sbom.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    sbom = json.loads(text)
    assert sbom["metadata"]["timestamp"].startswith("2023-11-14T22:13:20")
    assert sbom["metadata"]["component"]["name"] == "localhost/ocr-appliance:tiny-cpu"
    by_ref = {c["bom-ref"]: c for c in sbom["components"]}
    python = {ref for ref in by_ref if ref.startswith("pypi:")}
    assert python == {
        "pypi:/opt/vllm:vllm@0.33.0",
        "pypi:/opt/vllm:torch@2.13.0",
        "pypi:/opt/appliance/venv:fastapi@0.115.0",
    }, "gone-1.0 was deleted by a later layer's whiteout; the build host's packages are not here"
    assert by_ref["pypi:/opt/vllm:vllm@0.33.0"]["purl"] == "pkg:pypi/vllm@0.33.0"
    assert by_ref["pypi:/opt/vllm:vllm@0.33.0"]["licenses"][0]["license"]["id"] == "Apache-2.0"
    debian = sorted(c["purl"] for c in sbom["components"] if c["bom-ref"].startswith("deb:"))
    assert debian == [
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u10?arch=amd64",
        "pkg:deb/debian/python3@3.11.2-1%2Bb1?arch=amd64",
    ]
    models = {c["name"]: c for c in sbom["components"] if c["type"] == "machine-learning-model"}
    assert set(models) == set(MODELS)
    bundle = json.loads((tmp_path / "bundle.json").read_text())
    for name in MODELS:
        lock = read_lock(catalog.lock_path(name))
        assert lock is not None
        model = models[name]
        assert model["version"] == lock.commit
        props = {p["name"]: p["value"] for p in model["properties"]}
        assert props["appliance:lock_digest"] == lock.digest
        assert props["appliance:layer"] == bundle["models"][name]["layer"]
        hashes = {f["name"]: f["hashes"][0]["content"] for f in model["components"]}
        assert hashes == {f.path: f.sha256 for f in lock.files}
        assert "licenses" not in model, "the tiny models' manifests name no licence: none is invented"


def test_model_licence_from_the_manifest() -> None:
    [licence] = _licenses("apache-2.0")
    assert licence.id == "Apache-2.0"
    assert _licenses(None) == [] and _licenses("UNKNOWN") == []


def test_read_image_files_applies_layers_in_order(tmp_path: Path) -> None:
    signed_dist(tmp_path, Catalog(REPO / "manifests"), None, stamp=1)
    files = read_image_files(tmp_path / "ocr-appliance-tiny-cpu.tar", lambda p: p.endswith("METADATA"))
    assert sorted(files) == sorted(
        [
            f"{SITE}/vllm-0.33.0.dist-info/METADATA",
            f"{SITE}/torch-2.13.0.dist-info/METADATA",
            f"{VENV}/fastapi-0.115.0.dist-info/METADATA",
        ]
    )
