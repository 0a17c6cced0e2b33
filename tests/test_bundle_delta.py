"""Delta bundles on synthetic archives (fast): a one-model and a code-only update rebuild byte-identical
tars; `bundle apply` refuses another base, a damaged base or delta, an unsigned delta and a replay,
leaving nothing behind. Real podman-saved images: test_bundle_delta_images.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance.cli import app
from appliance.errors import BundleError
from appliance.image import signing
from appliance.image.bundle import verify, write_bundle, write_release
from appliance.image.delta import DELTA_FILE, LAYERS_DIR, apply, make_delta
from appliance.manifest import Catalog
from tests.conftest import REPO
from tests.image_support import flip_byte, offset_of
from tests.supply_support import MODELS, REF, image_archive, signed_dist
from tests.test_image_docker25 import docker25_archive

ARCHIVE = "ocr-appliance-tiny-cpu.tar"
V1 = dict.fromkeys(MODELS, 1)
V2 = {**V1, "tiny-dots-ocr": 2}


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(REPO / "manifests")


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return signing.new_key(tmp_path / "signing.key").private


@pytest.fixture
def pub(key: Path) -> Path:
    return signing.public_path(key)


@pytest.fixture
def old(tmp_path: Path, catalog: Catalog, key: Path) -> Path:
    signed_dist(tmp_path / "old", catalog, key, stamp=1000, seeds=V1)
    return tmp_path / "old"


def _delta(tmp_path: Path, catalog: Catalog, key: Path, old: Path, name: str, **kwargs) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    full = tmp_path / f"{name}-full"
    signed_dist(full, catalog, key, **kwargs)
    delta = tmp_path / f"{name}-delta"
    make_delta(full, old / "bundle.json", delta)
    return full, delta


@pytest.mark.parametrize(
    ("update", "shipped_role"),
    [({"stamp": 2000, "seeds": V2}, "model"), ({"stamp": 2000, "seeds": V1, "code": b"code v2"}, "code")],
    ids=["one-model", "code-only"],
)
def test_update_round_trips_byte_identical(
    tmp_path: Path, catalog: Catalog, key: Path, pub: Path, old: Path, update: dict, shipped_role: str
) -> None:
    full, delta = _delta(tmp_path, catalog, key, old, "new", **update)
    recipe = json.loads((delta / DELTA_FILE).read_text())
    [shipped] = recipe["shipped_layers"]
    layers = json.loads((full / "bundle.json").read_text())["layers"]
    assert [la["role"] for la in layers if la["diff_id"] == shipped] == [shipped_role]
    assert not (delta / ARCHIVE).exists()
    shipped_bytes = sum(f.stat().st_size for f in (delta / LAYERS_DIR).iterdir())
    assert shipped_bytes == next(la["size"] for la in layers if la["diff_id"] == shipped)
    assert (delta / DELTA_FILE).stat().st_size < 64_000
    rebuilt = apply(old, delta, pub)
    assert rebuilt == delta / ARCHIVE
    assert rebuilt.read_bytes() == (full / ARCHIVE).read_bytes()
    assert verify(delta, key=pub).signed is not None  # the delta dir is now a complete bundle
    assert not [p for p in delta.iterdir() if p.name.endswith(".partial")]


def _refused(old: Path, delta: Path, pub: Path, *fragments: str, installed: Path | None = None) -> None:
    with pytest.raises(BundleError) as info:
        apply(old, delta, pub, installed)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    assert sorted(p.name for p in delta.iterdir()) == sorted(
        ["SHA256SUMS", "bundle.json", "bundle.dsse.json", "sbom.cdx.json", DELTA_FILE, LAYERS_DIR]
    ), "nothing left behind"


def test_another_base_refused(tmp_path: Path, catalog: Catalog, key: Path, pub: Path, old: Path) -> None:
    _, delta = _delta(tmp_path, catalog, key, old, "new", stamp=2000, seeds=V2)
    other = tmp_path / "other"
    signed_dist(other, catalog, key, stamp=1500, seeds={**V1, "tiny-qwen3-vl": 7})
    _refused(other, delta, pub, "another base")


def test_damaged_base_refused(tmp_path: Path, catalog: Catalog, key: Path, pub: Path, old: Path) -> None:
    _, delta = _delta(tmp_path, catalog, key, old, "new", stamp=2000, seeds=V2)
    flip_byte(old / ARCHIVE, offset_of(old / ARCHIVE, b"base" * 100) + 5)
    _refused(old, delta, pub, "of the base is damaged")


def test_damaged_delta_layer_refused(tmp_path: Path, catalog: Catalog, key: Path, pub: Path, old: Path) -> None:
    _, delta = _delta(tmp_path, catalog, key, old, "new", stamp=2000, seeds=V2)
    [layer] = (delta / LAYERS_DIR).iterdir()
    flip_byte(layer, layer.stat().st_size // 2)
    _refused(old, delta, pub, "of the delta is damaged")


def test_damaged_recipe_refused(tmp_path: Path, catalog: Catalog, key: Path, pub: Path, old: Path) -> None:
    """An altered literal segment (say, a rewritten image config) rebuilds another tar: the signed sha256 refuses it."""
    _, delta = _delta(tmp_path, catalog, key, old, "new", stamp=2000, seeds=V2)
    recipe = json.loads((delta / DELTA_FILE).read_text())
    recipe["segments"][-1][1] = "AAAA" + recipe["segments"][-1][1][4:]
    (delta / DELTA_FILE).write_text(json.dumps(recipe))
    _refused(old, delta, pub, "the rebuilt tar has sha256", "the signed manifest says")


def test_unsigned_or_wrong_key_delta_refused(tmp_path: Path, catalog: Catalog, key: Path, old: Path) -> None:
    _, delta = _delta(tmp_path, catalog, key, old, "new", stamp=2000, seeds=V2)
    other = signing.new_key(tmp_path / "other.key")
    with pytest.raises(BundleError, match="wrong key"):
        apply(old, delta, other.public)
    (delta / "bundle.dsse.json").unlink()
    with pytest.raises(BundleError, match="unsigned bundle"):
        apply(old, delta, signing.public_path(key))
    assert not (delta / ARCHIVE).exists()


def test_replayed_delta_refused(tmp_path: Path, catalog: Catalog, key: Path, pub: Path, old: Path) -> None:
    """A delta older than what the host installed (its state), or older than its own base."""
    _, delta = _delta(tmp_path, catalog, key, old, "new", stamp=2000, seeds=V2)
    state = tmp_path / "state"
    state.mkdir()
    (state / "installed.json").write_text(json.dumps({"created": 3000, "archive_sha256": "f" * 64}))
    _refused(old, delta, pub, "replay", "3000", installed=state)
    _, back = _delta(tmp_path, catalog, key, old, "back", stamp=500, seeds=V2)
    _refused(old, back, pub, "replay", "older than its base")


def test_cli_save_since_needs_a_key_and_apply_reports(
    tmp_path: Path, catalog: Catalog, key: Path, pub: Path, old: Path
) -> None:
    runner = CliRunner()
    refused = runner.invoke(app, ["image", "save", "--since", str(old / "bundle.json"), "--dist", str(tmp_path / "d")])
    assert refused.exit_code != 0 and "--since needs --sign" in str(refused.exception)
    _, delta = _delta(tmp_path, catalog, key, old, "new", stamp=2000, seeds=V2)
    done = runner.invoke(app, ["bundle", "apply", str(old), str(delta), "--key", str(pub)])
    assert done.exit_code == 0, done.output
    assert "sha256 matches the signed manifest" in done.output


def test_delta_in_place_as_image_save_since_writes_it(
    tmp_path: Path, catalog: Catalog, key: Path, pub: Path, old: Path
) -> None:
    new = tmp_path / "new"
    signed_dist(new, catalog, key, stamp=2000, seeds=V2)
    full = (new / ARCHIVE).read_bytes()
    make_delta(new, old / "bundle.json", new)
    assert not (new / ARCHIVE).exists()
    sums = (new / "SHA256SUMS").read_text()
    assert f"  {ARCHIVE}\n" in sums and f"  {DELTA_FILE}\n" in sums and f"  {LAYERS_DIR}/" in sums
    assert apply(old, new, pub).read_bytes() == full


def test_docker25_oci_shape_signs_sboms_and_round_trips(tmp_path: Path, catalog: Catalog, key: Path, pub: Path):
    """Docker ≥ 25's `docker save` shape (OCI layout + legacy manifest.json into blobs/)."""
    dists = {}
    for name, stamp, seeds in (("old25", 1000, V1), ("new25", 2000, V2)):
        image_archive(tmp_path / f"{name}.tar", seeds)
        dist = dists[name] = tmp_path / name
        dist.mkdir()
        (tmp_path / f"work-{name}").mkdir()
        docker25_archive(tmp_path / f"{name}.tar", dist / ARCHIVE, tmp_path / f"work-{name}")
        write_release(write_bundle(catalog, "tiny-cpu", dist / ARCHIVE, REF), catalog, key, stamp)
        assert verify(dist, key=pub).signed is not None
    sbom = json.loads((dists["new25"] / "sbom.cdx.json").read_text())
    assert "pypi:/opt/vllm:vllm@0.33.0" in {c["bom-ref"] for c in sbom["components"]}
    full = (dists["new25"] / ARCHIVE).read_bytes()
    delta = tmp_path / "delta25"
    [shipped] = make_delta(dists["new25"], dists["old25"] / "bundle.json", delta)["shipped_layers"]
    assert shipped == json.loads((dists["new25"] / "bundle.json").read_text())["models"]["tiny-dots-ocr"]["layer"]
    assert apply(dists["old25"], delta, pub).read_bytes() == full


def test_cli_save_since_writes_the_delta_in_place(
    tmp_path: Path, catalog: Catalog, key: Path, pub: Path, old: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`image save --since`, podman save replaced by a synthetic image (real ones: test_bundle_delta_images)."""
    from appliance.image import bundle, tools

    def fake_save(_catalog, _profile, dist, *, ref, builder, key, stamp):  # type: ignore[no-untyped-def]
        return signed_dist(dist, catalog, key, stamp=stamp, seeds=V2)

    monkeypatch.setattr(bundle, "save", fake_save)
    monkeypatch.setattr(tools, "pick_builder", lambda builder: "buildah")
    delta = tmp_path / "delta"
    args = ["image", "save", "--dist", str(delta), "--sign", str(key), "--stamp", "2000"]
    done = CliRunner().invoke(app, [*args, "--since", str(old / "bundle.json")])
    assert done.exit_code == 0, done.output
    assert "1 new layer(s)" in done.output and "bundle apply" in done.output
    assert not (delta / ARCHIVE).exists()
    assert apply(old, delta, pub).is_file()
