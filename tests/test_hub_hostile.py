"""Hostile and broken hubs, over both protocols (Hugging Face and ModelScope), through the CLI:
the project's own mirror with fault injection on 127.0.0.1. Every case is refused in one line
naming the file and the problem, the good store and lock untouched (`Scene.refused`)."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from appliance.mirror import Faults, MirrorRepo, repo_from_dir
from tests.conftest import ManifestDir, make_files
from tests.store_scene import GOOD, Scene

REPO = "org/hostile"
# Files the good store does not hold yet (a file it holds is taken from the store, not downloaded).
LFS = "weights/extra.safetensors"  # listed with its sha256
SMALL = "generation_config.json"  # listed with its git blob id

LISTING_CASES = {
    "dot-dot": ({"path": "../etc/passwd", "size": 10}, r"'\.\./etc/passwd'.*'\.\.'"),
    "absolute": ({"path": "/etc/passwd", "size": 10}, r"'/etc/passwd'.*absolute"),
    "duplicate": ({"path": "config.json", "size": 10}, r"'config\.json'.*listed twice"),
    "unicode twin": (
        {"path": unicodedata.normalize("NFD", "café.json"), "size": 1},
        r"Unicode twin of 'caf\\xe9\.json': 'cafe\\u0301\.json'",
    ),
    "control character": ({"path": "evil\r\nname.json", "size": 1}, r"control character"),
    "backslash": ({"path": "..\\..\\evil", "size": 1}, r"backslash"),
    "over-long name": ({"path": "x" * 300, "size": 1}, r"too long"),
    "file and folder": ({"path": "config.json/inner", "size": 1}, r"'config\.json'.*both a file and a folder"),
    "nested dot-dot": ({"path": "weights/../../../escape", "size": 1}, r"'\.\.'"),
    "negative size": ({"path": "x.json", "size": -5}, r"'x\.json'.*invalid size -5"),
    "size not a number": (
        {"path": "x.json", "hf": {"size": "12"}, "modelscope": {"Size": "twelve"}},
        r"'x\.json'.*invalid size '12'|malformed answer: ValueError: invalid literal for int",
    ),
    "malformed sha256": ({"path": "x.bin", "size": 3, "sha256": "zz"}, r"'x\.bin'.*malformed sha256 'zz'"),
    "empty path": ({"path": "", "size": 1}, r"refusing file '': empty"),
}


@pytest.fixture
def hub_scene(tmp_path: Path, manifests: ManifestDir, start_mirror):  # type: ignore[no-untyped-def]
    """(scene with a good store, the hub repo, a function starting the mirror with faults)."""
    scene = Scene(tmp_path, manifests)
    files = GOOD | {"café.json": b"{}", LFS: bytes(range(256)) * 300, SMALL: b'{"max_new_tokens": 8}\n' * 10}
    repo = repo_from_dir(REPO, make_files(tmp_path / "hub", files), branches=("main", "master"))

    def serve(kind: str, faults: Faults) -> MirrorRepo:
        start_mirror([repo], faults)
        scene.use(f"{kind}:{REPO}", revision=repo.commit)
        return repo

    return scene, serve


@pytest.mark.parametrize("kind", ["hf", "modelscope"])
@pytest.mark.parametrize("case", list(LISTING_CASES))
def test_hostile_listing_refused(hub_scene, kind: str, case: str) -> None:  # type: ignore[no-untyped-def]
    scene, serve = hub_scene
    entry, match = LISTING_CASES[case]
    serve(kind, Faults(extra_listing=[entry]))
    scene.refused("fetch", "m", match=match)


# (faults, expected line, protocols). Integrity faults run over HF only here: modelscope_hub re-checks
# the sha256 itself and retries with a 1 + 2 s backoff per attempt, too slow for CI; test_fetch_hub
# covers ModelScope's refusal of a wrong sha256, and truncated bodies (the HF client's own resume
# retries take 15 s here), with retries off.
BODY_CASES = {
    "flipped byte, LFS file": (lambda: Faults(flip_byte={LFS}), rf"{LFS}: sha256 \w+, the hub lists", ["hf"]),
    "wrong listed sha256": (lambda: Faults(wrong_sha256={LFS}), rf"{LFS}: sha256 \w+, the hub lists", ["hf"]),
    "file vanished": (lambda: Faults(status={SMALL: 404}), rf"{SMALL}.*not found", ["hf", "modelscope"]),
    "file forbidden": (lambda: Faults(status={SMALL: 403}), r"access denied", ["hf", "modelscope"]),
    "repo gated": (lambda: Faults(status={REPO: 401}), r"access denied", ["hf", "modelscope"]),
}


@pytest.mark.parametrize(
    ("case", "kind"), [(case, kind) for case, (_, _, kinds) in BODY_CASES.items() for kind in kinds]
)
def test_broken_body_refused(hub_scene, case: str, kind: str) -> None:  # type: ignore[no-untyped-def]
    scene, serve = hub_scene
    faults, match, _ = BODY_CASES[case]
    serve(kind, faults())
    scene.refused("fetch", "m", match=match)


def test_small_file_flipped_byte_refused_against_git_blob_id(hub_scene) -> None:  # type: ignore[no-untyped-def]
    scene, serve = hub_scene
    serve("hf", Faults(flip_byte={SMALL}))
    scene.refused("fetch", "m", match=rf"{SMALL}: git blob id differs")


def test_disk_full_mid_download(hub_scene, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import errno
    import os

    from appliance.store.sources import hf

    scene, serve = hub_scene
    serve("hf", Faults())

    def full(self, data: bytes) -> int:  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(hf._HashingSink, "write", full)
    scene.refused("fetch", "m", match=r"disk full while downloading file '[^']+'")
