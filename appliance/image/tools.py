"""Running the container tools: one place that finds them, runs them, and turns failures into ImageError.

This machine class has no Docker daemon, crun fails on hybrid cgroups and on raising rlimits, and
`buildah run --network none` is refused with chroot isolation (DESIGN §8); the flags below are the
combinations verified to work.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

from appliance.errors import ImageError

INSTALL_HINT = "apt-get install -y buildah podman skopeo"
# `podman run` that works on cgroup-v1 hybrid hosts: runc, and both ulimits given together.
PODMAN_RUN = ("podman", "--runtime", "runc", "run", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")


def require(tool: str, hint: str = INSTALL_HINT) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ImageError(f"{tool} not found on PATH; install it: {hint}")
    return path


def run(
    cmd: Sequence[str],
    what: str,
    *,
    quiet: bool = False,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run `cmd`; return its stdout. `quiet`: show its output only if it fails."""
    require(cmd[0])
    kwargs = {"cwd": cwd, "env": dict(env) if env is not None else None, "check": False}
    if quiet:
        proc = subprocess.run(list(cmd), capture_output=True, **kwargs)  # type: ignore[call-overload]
        out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    else:  # builds are long: let their progress through (to stderr, keeping stdout for results)
        proc = subprocess.run(list(cmd), stdout=sys.stderr, stderr=sys.stderr, **kwargs)  # type: ignore[call-overload]
        out, err = "", ""
    if proc.returncode != 0:
        tail = "\n".join((err or out).strip().splitlines()[-15:])
        command = " ".join(cmd)
        raise ImageError(f"{what} failed (exit {proc.returncode}): {command}" + (f"\n{tail}" if tail else ""))
    return out


@cache
def docker_daemon() -> bool:
    """Does a Docker daemon answer (`docker info` succeeds)?"""
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


def docker_buildx() -> bool:
    """Is the buildx plugin there (`docker buildx version`)? Debian's docker.io has none."""
    return subprocess.run(["docker", "buildx", "version"], capture_output=True, check=False).returncode == 0


def warn(message: str) -> None:
    """A one-line warning on stderr (build output goes there too)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def pick_builder(requested: str = "auto") -> str:
    """`docker` when a daemon answers, else `buildah` (DESIGN §4)."""
    if requested == "auto":
        requested = "docker" if docker_daemon() else "buildah"
    if requested == "docker" and not docker_daemon():
        raise ImageError("no Docker daemon answers (`docker info` fails); use --builder buildah")
    require(requested)
    return requested


def image_exists(ref: str, builder: str = "buildah") -> bool:
    if builder == "docker":
        return subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode == 0
    require("podman")
    return subprocess.run(["podman", "image", "exists", ref], capture_output=True).returncode == 0
