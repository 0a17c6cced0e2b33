"""Paths inside the appliance image (the lead's layout; DESIGN §4)."""

from __future__ import annotations

from pathlib import PurePosixPath

from appliance.runtime.compile_cache import WARM_ROOT
from appliance.runtime.vllm_args import MODELS_ROOT

__all__ = [
    "BASE_LABEL",
    "BUILDER_LABEL",
    "CACHE_DIR",
    "CTL_CONF",
    "CTL_DEFAULT",
    "CUDA_LABEL",
    "CUDA_VERSION_FROM_BASE",
    "MANIFESTS",
    "MODELS_LABEL",
    "MODELS_ROOT",
    "REPRODUCIBLE_LABEL",
    "RUN_DIR",
    "SUPERVISORD_CONF",
    "TINI",
    "VENV",
    "WARM_LABEL",
    "WARM_ROOT",
]

VENV = PurePosixPath("/opt/appliance/venv")  # the appliance's own venv; the base's Python is never touched
MANIFESTS = PurePosixPath("/opt/appliance/manifests")
SUPERVISORD_CONF = PurePosixPath("/etc/appliance/supervisord.conf")
RUN_DIR = PurePosixPath("/run/appliance")
CTL_CONF = "supervisorctl.conf"  # written by `appliance boot` into RUN_DIR with this boot's credentials
# Where a bare `supervisorctl` looks (supervisor.options.ClientOptions searchpaths): a symlink to the
# run dir's conf, so `docker exec CTR supervisorctl status` works as typed.
CTL_DEFAULT = PurePosixPath("/etc/supervisord.conf")
CACHE_DIR = PurePosixPath("/var/cache/appliance")
TINI = PurePosixPath("/usr/local/bin/tini")
# Image label listing the models in layer order (how a saved image's layers are mapped to models).
MODELS_LABEL = "appliance.models"
BASE_LABEL = "appliance.base-image"
# Set by `appliance image warm`: the models whose compile caches it added, one layer each, in order,
# under WARM_ROOT/<model> (read-only; the launcher seeds the writable cache dir from it).
WARM_LABEL = "appliance.warm"
# Set by `appliance image build` (not the Dockerfile): which builder ran, and whether it could pin
# layer timestamps so that the same lock gives the same layer digest.
BUILDER_LABEL = "appliance.builder"
REPRODUCIBLE_LABEL = "appliance.reproducible-layers"
# The base's CUDA version (its CUDA_VERSION, set by every nvidia/cuda image; empty on a CPU base):
# `appliance doctor` checks the host driver against it (also baked as APPLIANCE_CUDA_VERSION).
CUDA_LABEL = "appliance.cuda-version"
CUDA_VERSION_FROM_BASE = "${CUDA_VERSION}"  # substituted by docker/buildah from the base's ENV
