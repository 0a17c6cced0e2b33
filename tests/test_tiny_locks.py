"""The embedded default profile: generated tiny models ↔ committed manifests and locks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.manifest import Catalog
from appliance.store.hashing import sha256_file
from appliance.store.lock import read_lock
from appliance.testing.hub import TINY_PROFILE, tiny_repos
from tests.conftest import REPO


def test_generated_tiny_models_match_committed_pins_and_locks(tmp_path: Path) -> None:
    """Same seed → byte-identical files → the committed locks stay valid (else: appliance testing relock-tiny)."""
    catalog = Catalog(REPO / "manifests")
    for repo, manifest in zip(tiny_repos(tmp_path, catalog), catalog.profile_models(TINY_PROFILE), strict=True):
        lock = read_lock(catalog.lock_path(manifest.name))
        assert lock is not None, f"{manifest.name}: no committed lock"
        assert manifest.revision == repo.commit == lock.commit, manifest.name
        on_disk = {
            p.relative_to(tmp_path / manifest.name).as_posix(): p
            for p in (tmp_path / manifest.name).rglob("*")
            if p.is_file()
        }
        assert {f.path: f.sha256 for f in lock.files} == {rel: sha256_file(p) for rel, p in on_disk.items()}
        # nothing that depends on where this checkout or its venv lives (CI clones elsewhere)
        for rel, path in on_disk.items():
            data = path.read_bytes()
            for place in {str(REPO), sys.prefix, str(tmp_path)}:
                assert place.encode() not in data, f"{manifest.name}/{rel} holds the path {place}"


def _appliance(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=os.environ | (env or {}),
        timeout=300,
    )


def test_main_job_fetch_frozen_and_verify_through_the_cli(tmp_path: Path) -> None:
    store = tmp_path / "store"
    env = {"APPLIANCE_STORE": str(store)}
    fetch = _appliance(
        "testing",
        "tiny-hub",
        "--",
        sys.executable,
        "-m",
        "appliance",
        "fetch",
        "--profile",
        TINY_PROFILE,
        "--frozen",
        env=env,
    )
    assert fetch.returncode == 0, fetch.stderr
    assert "unchanged" in fetch.stdout  # the committed locks were honoured, not rewritten
    ok = _appliance("verify", "--profile", TINY_PROFILE, "--deep", env=env)
    assert ok.returncode == 0 and ok.stdout.count(": ok") == 3, ok.stdout + ok.stderr
    weights = store / "tiny-qwen3-vl" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    bad = _appliance("verify", "--profile", TINY_PROFILE, "--deep", env=env)
    assert bad.returncode == 1
    assert "tiny-qwen3-vl: model.safetensors: sha256" in bad.stderr and "Traceback" not in bad.stderr


def test_fetch_without_hub_says_what_to_do(tmp_path: Path) -> None:
    result = _appliance(
        "fetch", "tiny-qwen3-vl", env={"APPLIANCE_STORE": str(tmp_path), "HF_ENDPOINT": "http://127.0.0.1:9"}
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot reach http://127.0.0.1:9" in result.stderr and "HF_ENDPOINT" in result.stderr


@pytest.mark.parametrize("args", [[], ["fetch"], ["verify"], ["mirror", "serve"], ["testing", "tiny-hub"]])
def test_every_command_explains_itself(args: list[str]) -> None:
    result = _appliance(*args, "--help")
    assert result.returncode == 0 and "Usage" in result.stdout


def test_tiny_hub_passes_on_the_exit_status_of_its_command() -> None:
    assert _appliance("testing", "tiny-hub", "--", sys.executable, "-c", "raise SystemExit(3)").returncode == 3
