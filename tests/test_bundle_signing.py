"""Signed bundles: `appliance keys new`, the signed manifest, and each refusal of `bundle verify --key`
(unsigned, wrong key, a consistently rewritten bundle, an altered manifest or SBOM, a replay), on
synthetic archives (fast)."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance.cli import app
from appliance.errors import BundleError, SigningError
from appliance.image import release, signing
from appliance.image.bundle import verify, write_bundle
from appliance.manifest import Catalog
from tests.conftest import REPO
from tests.image_support import resum
from tests.supply_support import MODELS, REF, image_archive, signed_dist

ARCHIVE = "ocr-appliance-tiny-cpu.tar"


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(REPO / "manifests")


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return signing.new_key(tmp_path / "keys" / "signing.key").private


@pytest.fixture
def pub(key: Path) -> Path:
    return signing.public_path(key)


@pytest.fixture
def dist(tmp_path: Path, catalog: Catalog, key: Path) -> Path:
    signed_dist(tmp_path / "dist", catalog, key, stamp=1000)
    return tmp_path / "dist"


def _refused(dist: Path, pub: Path, *fragments: str, installed: Path | None = None) -> str:
    with pytest.raises(BundleError) as info:
        verify(dist, key=pub, installed=installed)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_new_key_is_private_and_has_an_id(tmp_path: Path) -> None:
    pair = signing.new_key(tmp_path / "k" / "signing.key")
    assert stat.S_IMODE(pair.private.stat().st_mode) == 0o600
    assert pair.public.name == "signing.key.pub" and b"PUBLIC KEY" in pair.public.read_bytes()
    assert (
        pair.key_id
        == signing.key_id(signing.load_public(pair.public))
        == signing.key_id(signing.load_public(pair.private))
    )
    with pytest.raises(SigningError, match="exists already"):
        signing.new_key(pair.private)


def test_signed_bundle_passes_and_is_reproducible(tmp_path: Path, catalog: Catalog, dist: Path, key: Path, pub: Path):
    report = verify(dist, key=pub)
    signed = report.signed
    assert signed is not None and signed["created"] == 1000 and signed["image"] == REF
    assert signed["archive"]["sha256"] == report.bundle["archive"]["sha256"]
    assert set(signed["models"]) == set(MODELS)
    assert [la["diff_id"] for la in signed["layers"]] == [la["diff_id"] for la in report.bundle["layers"]]
    assert set(signed["files"]) == {"bundle.json", "sbom.cdx.json"}
    sums = (dist / "SHA256SUMS").read_text()
    for name in (ARCHIVE, "bundle.json", "sbom.cdx.json", "bundle.dsse.json"):
        assert f"  {name}\n" in sums
    again = tmp_path / "again"
    signed_dist(again, catalog, key, stamp=1000)
    for name in ("bundle.dsse.json", "sbom.cdx.json", "SHA256SUMS"):
        assert (again / name).read_bytes() == (dist / name).read_bytes(), name


def test_unsigned_bundle_refused(tmp_path: Path, catalog: Catalog, pub: Path) -> None:
    signed_dist(tmp_path / "plain", catalog, None, stamp=1000)
    assert verify(tmp_path / "plain").signed is None  # without --key: the old checks only
    assert "  sbom.cdx.json\n" in (tmp_path / "plain" / "SHA256SUMS").read_text()
    _refused(tmp_path / "plain", pub, "unsigned bundle", "bundle.dsse.json")


def test_wrong_key_refused(tmp_path: Path, dist: Path) -> None:
    other = signing.new_key(tmp_path / "other.key")
    _refused(dist, other.public, "wrong key", other.key_id[:16])


def test_consistently_rewritten_bundle_refused(dist: Path, pub: Path, catalog: Catalog) -> None:
    """Tar, bundle.json and SHA256SUMS rewritten together (every unsigned check passes), the signature kept."""
    archive = dist / ARCHIVE
    image_archive(archive, dict.fromkeys(MODELS, 1), code=b"backdoor")
    write_bundle(catalog, "tiny-cpu", archive, REF)
    verify(dist)  # the unsigned checks cannot tell
    _refused(dist, pub, "the tar is not the one that was signed", "bundle.json: sha256", "altered after signing")


def test_rewritten_tar_with_the_signed_bundle_json_refused(dist: Path, pub: Path) -> None:
    """bundle.json left as signed, the tar and SHA256SUMS replaced: the signed archive digest catches it."""
    archive = dist / ARCHIVE
    bundle = (dist / "bundle.json").read_bytes()
    image_archive(archive, dict.fromkeys(MODELS, 1), code=b"backdoor")
    resum(dist, archive)
    (dist / "bundle.json").write_bytes(bundle)
    _refused(dist, pub, "the tar is not the one that was signed")


def test_altered_manifest_refused(dist: Path, pub: Path) -> None:
    envelope = json.loads((dist / "bundle.dsse.json").read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["created"] = 99999
    envelope["payload"] = base64.b64encode(signing.canonical(statement)).decode()
    (dist / "bundle.dsse.json").write_text(json.dumps(envelope))
    _refused(dist, pub, "does not match the manifest")


def test_altered_sbom_refused(dist: Path, pub: Path) -> None:
    sbom = dist / "sbom.cdx.json"
    sbom.write_text(sbom.read_text().replace("0.33.0", "0.34.0"))
    _refused(dist, pub, "sbom.cdx.json: sha256", "altered after signing")


def test_replayed_older_bundle_refused(tmp_path: Path, catalog: Catalog, key: Path, pub: Path) -> None:
    state = tmp_path / "state"
    old = tmp_path / "old"
    signed_dist(old, catalog, key, stamp=1000)
    new = tmp_path / "new"
    signed_dist(new, catalog, key, stamp=2000, seeds={**dict.fromkeys(MODELS, 1), "tiny-dots-ocr": 2})
    first = verify(old, key=pub, installed=state)  # no state yet: a first install
    assert first.signed is not None
    release.record_installed(state, first.signed, signing.key_id(signing.load_public(pub)))
    report = verify(new, key=pub, installed=state)
    assert report.signed is not None
    release.record_installed(state, report.signed, "k")
    verify(new, key=pub, installed=state)  # the installed bundle itself verifies again
    _refused(old, pub, "replay", "1000", "2000", installed=state)


def test_same_stamp_other_content_is_a_replay(tmp_path: Path, catalog: Catalog, key: Path, pub: Path) -> None:
    state = tmp_path / "state"
    one, two = tmp_path / "one", tmp_path / "two"
    signed_dist(one, catalog, key, stamp=1000)
    signed_dist(two, catalog, key, stamp=1000, code=b"other")
    release.record_installed(state, verify(one, key=pub).signed or {}, "k")
    _refused(two, pub, "equals the installed one", installed=state)


def test_cli_keys_sign_verify_record(tmp_path: Path, catalog: Catalog) -> None:
    runner = CliRunner()
    made = runner.invoke(app, ["keys", "new", str(tmp_path / "k.key")])
    assert made.exit_code == 0, made.output
    kid = signing.key_id(signing.load_public(tmp_path / "k.key.pub"))
    assert kid in made.output
    assert runner.invoke(app, ["keys", "id", str(tmp_path / "k.key.pub")]).output.strip() == kid
    signed_dist(tmp_path / "dist", catalog, tmp_path / "k.key", stamp=5)
    args = ["bundle", "verify", str(tmp_path / "dist"), "--key", str(tmp_path / "k.key.pub")]
    ok = runner.invoke(app, [*args, "--installed", str(tmp_path / "state"), "--record"])
    assert ok.exit_code == 0, ok.output
    assert "stamp 5" in ok.output
    assert json.loads((tmp_path / "state" / "installed.json").read_text())["created"] == 5
    wrong = signing.new_key(tmp_path / "w.key")
    refused = runner.invoke(app, ["bundle", "verify", str(tmp_path / "dist"), "--key", str(wrong.public)])
    assert refused.exit_code != 0 and "wrong key" in str(refused.exception)
