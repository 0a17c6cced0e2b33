"""Every environment setting the appliance reads, in one place.

Callers read these through the functions below at call time (not at import time), so a test
fixture can point every path at a temporary directory by setting environment variables.
"""

from __future__ import annotations

import os
from pathlib import Path

# The repository / install root holding manifests/ (the package sits beside it in a checkout;
# in an image the manifests are copied next to the installed code).
PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_PROFILE = "tiny-cpu"

# Switches that keep every library in the appliance off the network (DESIGN §5). They are baked
# as ENV into the image, set for every supervised program, and checked by `appliance doctor`.
OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_HOST_IP": "127.0.0.1",
    # torch.distributed's gloo (vLLM's CPU-side process group, also on GPU) otherwise resolves the
    # host name through DNS; NCCL's bootstrap likewise. One host: loopback is all they need.
    "GLOO_SOCKET_IFNAME": "lo",
    "NCCL_SOCKET_IFNAME": "lo",
    "PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK": "True",
}


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from exc


def project_root() -> Path:
    """Directory holding `manifests/` (APPLIANCE_ROOT, else the checkout the package lives in)."""
    return _env_path("APPLIANCE_ROOT", PACKAGE_DIR.parent)


def manifests_dir() -> Path:
    return _env_path("APPLIANCE_MANIFESTS", project_root() / "manifests")


def store_dir() -> Path:
    """Where fetched models live: one directory per model (APPLIANCE_STORE, default ./store)."""
    return _env_path("APPLIANCE_STORE", project_root() / "store")


def fetch_workers() -> int:
    """Files downloaded or hashed at once (APPLIANCE_FETCH_WORKERS)."""
    return max(1, _env_int("APPLIANCE_FETCH_WORKERS", 8))


def hash_workers() -> int:
    """Files hashed at once by `verify --deep`: one per core (hashlib releases the GIL)."""
    return max(1, _env_int("APPLIANCE_HASH_WORKERS", os.cpu_count() or 1))


def debug() -> bool:
    """APPLIANCE_DEBUG=1 shows tracebacks for expected errors."""
    return os.environ.get("APPLIANCE_DEBUG", "").lower() in {"1", "true", "yes"}


# --- run time (inside the appliance image; tests point these at temp dirs) -------------------------


def profile_name() -> str:
    """The profile this appliance runs (APPLIANCE_PROFILE), baked into the image."""
    return os.environ.get("APPLIANCE_PROFILE") or DEFAULT_PROFILE


def run_dir() -> Path:
    """Volatile state: start-up phases, the supervisord socket and credentials (APPLIANCE_RUN_DIR)."""
    return _env_path("APPLIANCE_RUN_DIR", Path("/run/appliance"))


def vllm_python() -> str:
    """Interpreter that has vLLM (APPLIANCE_VLLM_PYTHON): the base image's, never the appliance venv's."""
    return os.environ.get("APPLIANCE_VLLM_PYTHON") or "python3"


def _cache_home() -> Path:
    return _env_path("XDG_CACHE_HOME", Path.home() / ".cache")


def hf_home() -> Path:
    """Hugging Face cache (HF_HOME): remote code is copied to $HF_HOME/modules, so it must be writable."""
    return _env_path("HF_HOME", _cache_home() / "huggingface")


def vllm_cache_root() -> Path:
    """vLLM's compile and kernel caches (VLLM_CACHE_ROOT)."""
    return _env_path("VLLM_CACHE_ROOT", _cache_home() / "vllm")


def gateway_host() -> str:
    """Address the gateway listens on (APPLIANCE_GATEWAY_HOST): all interfaces inside the container,
    where the published port is the only way in; 127.0.0.1 for tests and bare-host runs."""
    return os.environ.get("APPLIANCE_GATEWAY_HOST") or "0.0.0.0"


def supervisord_conf() -> Path | None:
    """supervisord.conf `appliance boot` runs (APPLIANCE_SUPERVISORD_CONF); None: render the profile's at boot."""
    value = os.environ.get("APPLIANCE_SUPERVISORD_CONF")
    return Path(value) if value else None


def supervisor_user() -> str:
    """User name of supervisord's control socket (APPLIANCE_SUPERVISOR_USER)."""
    return os.environ.get("APPLIANCE_SUPERVISOR_USER") or "appliance"


def supervisor_password_file() -> Path | None:
    """A mounted secret holding the control-socket password (APPLIANCE_SUPERVISOR_PASSWORD_FILE);
    without one, `appliance boot` generates a password at first boot and keeps it in the run dir."""
    value = os.environ.get("APPLIANCE_SUPERVISOR_PASSWORD_FILE")
    return Path(value) if value else None
