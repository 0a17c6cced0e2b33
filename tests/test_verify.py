from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.store.hashing import sha256_file
from appliance.store.lock import Lock, LockedFile
from appliance.store.verify import verify_deep, verify_fast
from tests.conftest import make_files
from tests.test_paths_lock import _manifest

FILES = {"config.json": b"{}", "model.safetensors": os.urandom(300_000), "sub/tokenizer.json": b"tok" * 100}


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, Lock]:
    root = make_files(tmp_path / "m", FILES)
    locked = [LockedFile(path=p, size=(root / p).stat().st_size, sha256=sha256_file(root / p)) for p in FILES]
    return root, Lock.create(_manifest(), "c" * 40, locked)


def _problems(found: list) -> dict[str, str]:  # type: ignore[type-arg]
    return {p.path: p.problem for p in found}


def test_intact_store_passes(model: tuple[Path, Lock]) -> None:
    root, lock = model
    assert verify_fast(root, lock) == [] and verify_deep(root, lock, workers=2) == []


def test_flipped_byte_found_by_deep_only(model: tuple[Path, Lock]) -> None:
    root, lock = model
    path = root / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[12345] ^= 0x01
    path.write_bytes(bytes(data))
    assert verify_fast(root, lock) == []  # same size: --fast cannot see it, by design
    problems = _problems(verify_deep(root, lock, workers=2))
    assert list(problems) == ["model.safetensors"] and "sha256" in problems["model.safetensors"]


def test_truncated_file(model: tuple[Path, Lock]) -> None:
    root, lock = model
    with open(root / "sub/tokenizer.json", "r+b") as handle:
        handle.truncate(10)
    for found in (verify_fast(root, lock), verify_deep(root, lock)):
        assert "truncated" in _problems(found)["sub/tokenizer.json"]


def test_extra_and_missing_files(model: tuple[Path, Lock]) -> None:
    root, lock = model
    (root / "config.json").unlink()
    (root / "sub" / "stray.bin").write_bytes(b"x")
    problems = _problems(verify_fast(root, lock))
    assert problems == {"config.json": "missing", "sub/stray.bin": "extra file, not in the lock"}


def test_symlink_is_not_a_file(model: tuple[Path, Lock], tmp_path: Path) -> None:
    root, lock = model
    outside = tmp_path / "outside.json"
    outside.write_bytes(b"{}")
    (root / "config.json").unlink()
    (root / "config.json").symlink_to(outside)
    assert "symlink" in _problems(verify_fast(root, lock))["config.json"]


def test_missing_model_dir(model: tuple[Path, Lock], tmp_path: Path) -> None:
    _, lock = model
    assert "missing" in verify_fast(tmp_path / "nope", lock)[0].problem


def test_stray_empty_folder_is_extra(model: tuple[Path, Lock]) -> None:
    root, lock = model
    (root / "sub" / "empty" / "deeper").mkdir(parents=True)
    assert _problems(verify_fast(root, lock)) == {"sub/empty/": "extra folder, not in the lock"}
