"""Staging the build context: exactly the locked, verified files, normalised (fast)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from appliance.errors import VerifyError
from appliance.image.context import stage_code, stage_models
from appliance.manifest import Catalog
from tests.conftest import ManifestDir
from tests.image_support import random_files, small_models


@pytest.fixture
def small(tmp_path: Path, manifests: ManifestDir) -> Catalog:
    return small_models(manifests, tmp_path, {"alpha": random_files(1), "beta": random_files(2)})


def _stage(catalog: Catalog, tmp_path: Path, **kwargs) -> Path:  # type: ignore[no-untyped-def]
    dest = tmp_path / "ctx" / "models"
    stage_models(catalog, catalog.profile_models("small"), tmp_path / "store", dest, **kwargs)
    return dest


def test_layer_tree_holds_files_manifest_and_lock(small: Catalog, tmp_path: Path) -> None:
    dest = _stage(small, tmp_path)
    tree = sorted(str(p.relative_to(dest / "alpha")) for p in (dest / "alpha").rglob("*") if p.is_file())
    assert tree == [
        "models/alpha/config.json",
        "models/alpha/weights/model.bin",
        "opt/appliance/manifests/locks/alpha.lock.json",
        "opt/appliance/manifests/models/alpha.yaml",
    ]
    assert (dest / "alpha/opt/appliance/manifests/locks/alpha.lock.json").read_bytes() == (
        small.lock_path("alpha").read_bytes()
    )
    for path in [dest, *(dest / "alpha").rglob("*")]:
        st = path.stat()
        if path.is_dir():
            assert (st.st_mode & 0o7777, st.st_mtime) == (0o755, 0), path


def test_hard_links_when_the_mode_is_canonical_else_copies(small: Catalog, tmp_path: Path) -> None:
    store = tmp_path / "store"
    os.chmod(store / "beta/config.json", 0o600)
    dest = tmp_path / "ctx" / "models"
    staged = stage_models(small, small.profile_models("small"), store, dest)
    assert [(s.name, s.linked, s.copied) for s in staged] == [("alpha", 2, 0), ("beta", 1, 1)]
    linked = dest / "alpha/models/alpha/weights/model.bin"
    assert linked.stat().st_ino == (store / "alpha/weights/model.bin").stat().st_ino
    copied = dest / "beta/models/beta/config.json"
    assert copied.stat().st_ino != (store / "beta/config.json").stat().st_ino
    assert (copied.stat().st_mode & 0o777, copied.stat().st_mtime) == (0o644, 0)
    assert (store / "beta/config.json").stat().st_mode & 0o777 == 0o600, "the store is never modified"


def test_copy_mode_never_links(small: Catalog, tmp_path: Path) -> None:
    dest = _stage(small, tmp_path, link=False)
    path = dest / "alpha/models/alpha/config.json"
    assert path.stat().st_nlink == 1 and path.stat().st_mtime == 0


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda m: (m / "stray.txt").write_text("x"), "stray.txt: extra file"),
        (lambda m: (m / "config.json").unlink(), "config.json: missing"),
        (lambda m: os.truncate(m / "weights/model.bin", 10), "weights/model.bin: size 10 bytes"),
    ],
)
def test_a_damaged_store_is_refused(small: Catalog, tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    damage(tmp_path / "store" / "beta")
    with pytest.raises(VerifyError, match=re.escape(message)):
        _stage(small, tmp_path)


def test_deep_staging_rehashes(small: Catalog, tmp_path: Path) -> None:
    path = tmp_path / "store/alpha/config.json"
    path.write_bytes(path.read_bytes().replace(b"1", b"7"))  # same size, other bytes
    _stage(small, tmp_path)  # fast: sizes only
    with pytest.raises(VerifyError, match=r"config\.json: sha256"):
        _stage(small, tmp_path, deep=True)


def test_code_carries_only_this_profile(small: Catalog, tmp_path: Path) -> None:
    wheel = tmp_path / "ocr_appliance-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    code = stage_code(small, small.profile("small"), tmp_path / "code", wheel, "[supervisord]\n")
    files = sorted(str(p.relative_to(code)) for p in code.rglob("*") if p.is_file())
    assert files == ["manifests/profiles/small.yaml", "ocr_appliance-0.1.0-py3-none-any.whl", "supervisord.conf"]
    assert (code / "supervisord.conf").read_text() == "[supervisord]\n"
