"""`verify` on a model folder or a lock the user cannot read: one line naming the path, exit 1, no
traceback. As root, the child drops the two capabilities that let root read through any mode bits."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, ManifestDir, make_files
from tests.store_scene import GOOD, Scene

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def _without_dac_override() -> None:
    """preexec: after exec, root keeps no capability outside the bounding set: mode bits apply."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture
def scene_with_modes() -> Iterator[Scene]:
    """A Scene whose modes the test changes (restored at the end, so it can be removed)."""
    root = Path(tempfile.mkdtemp(prefix="verify-unreadable-"))
    try:
        yield Scene(root, ManifestDir(root / "manifests"))
    finally:
        for path in [root, *root.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(root)


def _verify_as_user(scene: Scene, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *(command or ("verify", "m", "--deep")),
         "--manifests", str(scene.manifests.root), "--store", str(scene.store)],
        env=os.environ | {"HOME": str(scene.root), "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=60,
        preexec_fn=_without_dac_override if os.geteuid() == 0 else None,
    )  # fmt: skip


def _one_error(done: subprocess.CompletedProcess[str]) -> str:
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1 and "Traceback" not in done.stderr and len(errors) == 1, done.stderr
    return errors[0]


def test_unreadable_model_folder_named_in_one_line(scene_with_modes: Scene) -> None:
    scene = scene_with_modes
    assert _verify_as_user(scene).returncode == 0  # readable: passes
    (scene.store / "m").chmod(0o000)
    line = _one_error(_verify_as_user(scene))
    assert str(scene.store / "m") in line and "Permission denied" in line


def test_unreadable_lock_named_in_one_line(scene_with_modes: Scene) -> None:
    scene = scene_with_modes
    scene.lock.chmod(0o000)
    line = _one_error(_verify_as_user(scene))
    assert str(scene.lock) in line and "Permission denied" in line


def test_unreadable_folder_in_a_dir_source_refused(scene_with_modes: Scene) -> None:
    """os.walk skips a folder it cannot list unless told otherwise: its files would silently be missing."""
    scene = scene_with_modes
    src = make_files(scene.root / "new", GOOD | {"sub/hidden.json": b"{}"})
    scene.use(f"dir:{src}")
    (src / "sub").chmod(0o000)
    line = _one_error(_verify_as_user(scene, "fetch", "m"))
    assert str(src / "sub") in line and "Permission denied" in line


def test_unreadable_file_in_a_dir_source_refused(tmp_path: Path, manifests: ManifestDir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The listing names a file it cannot read, rather than retrying its copy three times."""
    scene = Scene(tmp_path, manifests)
    src = make_files(tmp_path / "new", GOOD | {"config.json": b"{}"})
    scene.use(f"dir:{src}")
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: str(path).endswith("config.json") is False and real_access(path, mode)
    )
    scene.refused("fetch", "m", match=r"cannot read .*new/config\.json: permission denied")
