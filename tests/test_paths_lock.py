from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.errors import LockError, UnsafePathError
from appliance.manifest import ModelManifest
from appliance.store.lock import Lock, LockedFile, disagreements, read_lock, write_lock
from appliance.store.paths import check_listing, safe_relpath

SHA = "a" * 64


@pytest.mark.parametrize(
    "path", ["../etc/passwd", "a/../../b", "/etc/passwd", "", "a\\b", "C:/x", ".", "a/..", "x\x00y"]
)
def test_unsafe_paths_refused(path: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_relpath("m", path)


def test_safe_paths_normalised() -> None:
    assert safe_relpath("m", "a/./b.json") == "a/b.json"
    assert safe_relpath("m", "PP-DocLayoutV2/inference.yml") == "PP-DocLayoutV2/inference.yml"


def test_duplicates_and_file_folder_clash_refused() -> None:
    with pytest.raises(UnsafePathError, match="listed twice"):
        check_listing("m", ["a.json", "./a.json"])
    with pytest.raises(UnsafePathError, match="both a file and a folder"):
        check_listing("m", ["a", "a/b"])


def _manifest(**changes: object) -> ModelManifest:
    data = {
        "name": "m",
        "engine": "qwen3-vl",
        "source": "hf:o/r",
        "revision": "main",
        "serve": {"served_model_name": "M"},
        "resources": {"weight_bytes": 1},
    } | changes
    return ModelManifest.model_validate(data)


def _lock(manifest: ModelManifest) -> Lock:
    files = [LockedFile(path="b.bin", size=2, sha256=SHA), LockedFile(path="a.json", size=1, sha256="b" * 64)]
    return Lock.create(manifest, "c" * 40, files)


def test_lock_roundtrip_and_sorted(tmp_path: Path) -> None:
    lock = _lock(_manifest())
    assert [f.path for f in lock.files] == ["a.json", "b.bin"] and lock.total_size == 3
    write_lock(tmp_path / "m.lock.json", lock)
    assert read_lock(tmp_path / "m.lock.json") == lock
    assert read_lock(tmp_path / "missing.lock.json") is None


def test_lock_edited_by_hand_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.lock.json"
    write_lock(path, _lock(_manifest()))
    data = json.loads(path.read_text())
    data["files"][0]["sha256"] = "f" * 64
    path.write_text(json.dumps(data))
    with pytest.raises(LockError, match="digest does not match"):
        read_lock(path)
    data = json.loads(path.read_text())
    data["files"][0]["path"] = "../evil"
    path.write_text(json.dumps(data))
    with pytest.raises(LockError, match="evil"):
        read_lock(path)


def test_disagreements() -> None:
    lock = _lock(_manifest())
    assert disagreements(_manifest(), lock) == []
    assert "source changed" in disagreements(_manifest(source="hf:o/other"), lock)[0]
    assert "revision changed" in disagreements(_manifest(revision="d" * 40), lock)[0]
    assert disagreements(_manifest(revision="c" * 40), lock) == []  # pinning the locked commit agrees
    assert "include/exclude" in disagreements(_manifest(exclude=["*.md"]), lock)[0]
