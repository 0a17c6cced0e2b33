"""`appliance mirror serve STORE`: one verified store feeds the other hosts of an isolated site."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from appliance.errors import VerifyError
from appliance.manifest import Catalog
from appliance.store.fetch import FetchOptions, fetch_model
from appliance.testing.hub import TINY_PROFILE, repos_from_store, tiny_repos
from appliance.testing.mirror import HubMirror
from tests.conftest import REPO


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny-cpu store, fetched through the tiny hub (as `make offline-image` does)."""
    catalog = Catalog(REPO / "manifests")
    root = tmp_path_factory.mktemp("store")
    work = tmp_path_factory.mktemp("tiny")
    with HubMirror(tiny_repos(work, catalog)) as mirror, pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_ENDPOINT", mirror.url)
        mp.setenv("MODELSCOPE_ENDPOINT", mirror.url)
        for manifest in catalog.profile_models(TINY_PROFILE):
            fetch_model(manifest, catalog.lock_path(manifest.name), root, FetchOptions(frozen=True))
    return root


def test_second_host_fetches_identical_models_from_a_served_store(store: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    catalog = Catalog(REPO / "manifests")
    with HubMirror(repos_from_store(store, catalog)) as mirror:
        monkeypatch.setenv("HF_ENDPOINT", mirror.url)
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", mirror.url)
        for manifest in catalog.profile_models(TINY_PROFILE):
            report = fetch_model(
                manifest, catalog.lock_path(manifest.name), tmp_path / "other", FetchOptions(frozen=True)
            )
            assert not report.lock_written and report.downloaded_bytes == report.total_bytes
            for f in (store / manifest.name).rglob("*"):
                if f.is_file():
                    assert (
                        tmp_path / "other" / manifest.name / f.relative_to(store / manifest.name)
                    ).read_bytes() == f.read_bytes()


def test_damaged_store_is_not_served(store: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    (copy / "tiny-dots-ocr" / "config.json").write_text("{}")  # other size
    with pytest.raises(VerifyError, match=r"tiny-dots-ocr: config\.json"):
        repos_from_store(copy, Catalog(REPO / "manifests"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_serves_until_interrupted(store: Path, signum: int) -> None:
    """Stops cleanly on Ctrl-C and on `kill`, also when started as a shell's background job (which
    inherits SIGINT ignored: Python then raises no KeyboardInterrupt)."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "mirror", "serve", str(store), "--port", str(port)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=os.environ | {"APPLIANCE_MANIFESTS": str(REPO / "manifests")},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                tree = httpx.get(f"http://127.0.0.1:{port}/api/models/appliance-tiny/Qwen3-VL-tiny/revision/main")
                break
            except httpx.ConnectError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.2)
        lock = Catalog(REPO / "manifests").lock_path("tiny-qwen3-vl").read_text()
        assert tree.status_code == 200 and tree.json()["sha"] in lock
        _hang_up_mid_download(port, tree.json()["siblings"])
    finally:
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "serving on" in out
    assert "Traceback" not in err, err  # a client hanging up is normal for a hub, not a crash


def _hang_up_mid_download(port: int, siblings: list[dict[str, str]]) -> None:
    """What download clients do when they close their pools: reset a connection mid-body."""
    import socket
    import struct

    name = next(s["rfilename"] for s in siblings if s["rfilename"].endswith(".safetensors"))
    for _ in range(6):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            path = f"/appliance-tiny/Qwen3-VL-tiny/resolve/main/{name}"
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
    time.sleep(0.5)
