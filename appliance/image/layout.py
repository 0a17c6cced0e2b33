"""Paths inside the appliance image (the lead's layout; DESIGN §4)."""

from __future__ import annotations

from pathlib import PurePosixPath

from appliance.runtime.vllm_args import MODELS_ROOT

__all__ = [
    "BASE_LABEL",
    "CACHE_DIR",
    "MANIFESTS",
    "MODELS_LABEL",
    "MODELS_ROOT",
    "RUN_DIR",
    "SUPERVISORD_CONF",
    "TINI",
    "VENV",
]

VENV = PurePosixPath("/opt/appliance/venv")  # the appliance's own venv; the base's Python is never touched
MANIFESTS = PurePosixPath("/opt/appliance/manifests")
SUPERVISORD_CONF = PurePosixPath("/etc/appliance/supervisord.conf")
RUN_DIR = PurePosixPath("/run/appliance")
CACHE_DIR = PurePosixPath("/var/cache/appliance")
TINI = PurePosixPath("/usr/local/bin/tini")
# Image label listing the models in layer order (how a saved image's layers are mapped to models).
MODELS_LABEL = "appliance.models"
BASE_LABEL = "appliance.base-image"
