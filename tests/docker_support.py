"""A private Docker Engine for tests (DESIGN §12): its own data root, exec root, pid file and socket;
never the machine's default socket or /var/lib/docker. Removed afterwards, also on failure.

Debian's dockerd 20.10 runs as root with `--iptables=false --ip6tables=false --bridge=none`, so
containers have no bridge and no published ports: run them `--network none` and reach them with
`docker exec`, or from the host inside their network namespace (`nsenter --net=/proc/PID/ns/net`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.conftest import REPO

ROOT = REPO / "work" / "test-docker"  # .ci/run's clean-up also removes it (a killed run)


class Dockerd:
    def __init__(self, root: Path) -> None:
        self.root = root
        # containerd's sockets live under the exec root: keep its path short (108-byte socket paths)
        self.exec_root = Path(tempfile.mkdtemp(prefix="adx-", dir="/tmp"))
        self.socket = self.exec_root / "docker.sock"
        self.env = os.environ | {"DOCKER_HOST": f"unix://{self.socket}"}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "dockerd.log"

    def start(self, timeout: float = 60) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [
            "dockerd",
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.exec_root / "exec"),
            "--pidfile", str(self.exec_root / "dockerd.pid"),
            "--host", f"unix://{self.socket}",
            "--iptables=false", "--ip6tables=false", "--bridge=none",
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.docker("info", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private dockerd did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def docker(self, *args: str, check: bool = True, timeout: float | None = 900) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    def run_shell(self, script: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            ids = self.docker("ps", "-aq", check=False, timeout=60).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=120)
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        for path in (self.root, self.exec_root):
            subprocess.run(["bash", str(REPO / "build" / "drop-storage.sh"), str(path)], check=False)


@contextlib.contextmanager
def private_dockerd(name: str) -> Iterator[Dockerd]:
    for tool in ("dockerd", "docker"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: `make setup` installs docker.io (build/system-deps.sh)")
    daemon = Dockerd(ROOT / f"{name}-{os.getpid()}")
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


def container_pid(daemon: Dockerd, container: str) -> int:
    return int(daemon.docker("inspect", "-f", "{{.State.Pid}}", container).stdout.strip())


def in_netns(
    daemon: Dockerd, container: str, cmd: Sequence[str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run a host command inside the container's network namespace (what `-p 8080:8080` would reach)."""
    pid = container_pid(daemon, container)
    return subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", *cmd], capture_output=True, text=True, timeout=timeout
    )
