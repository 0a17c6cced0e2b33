"""Render `Dockerfile.offline` for a profile (DESIGN §4).

The build context it expects is staged by `appliance.image.context`: `models/<name>/` (the tree
one model's layer adds: its verified files, manifest and lock), `wheelhouse/` (the appliance's
third-party wheels and `requirements.txt`), `code/` (the appliance wheel, the profile,
`supervisord.conf`) and `tini-static`. The build
itself needs no network.

Layers, most stable first, so a change re-ships as little as possible:
1. tini, the `appliance` user and its writable directories;
2. one layer per model (`COPY models/<name>/ /`): its files under /models/<name>, read-only and
   owned by root, and its manifest and lock under /opt/appliance/manifests;
3. the appliance venv with its third-party packages (built in the `venv` stage);
4. the appliance code: its package, console script, the profile and supervisord.conf (laid out
   under /stage in the `code` stage and copied as one layer).
ENV, USER, HEALTHCHECK and the entrypoint add no layers and come last, so they never invalidate a
cached model layer. The base's own Python environment (vLLM, torch) is never touched.
"""

from __future__ import annotations

import json

from appliance import __version__, constants
from appliance.image.bases import APPLIANCE_GID, APPLIANCE_UID, BaseImage, base_image
from appliance.image.layout import (
    BASE_LABEL,
    CACHE_DIR,
    CTL_CONF,
    CTL_DEFAULT,
    CUDA_LABEL,
    CUDA_VERSION_FROM_BASE,
    MANIFESTS,
    MODELS_LABEL,
    MODELS_ROOT,
    RUN_DIR,
    SUPERVISORD_CONF,
    TINI,
    VENV,
)
from appliance.manifest import Catalog, Profile
from appliance.probes import ProbeValues, probe_values

IMAGE_NAME = "localhost/ocr-appliance"
DOCKERFILE = "Dockerfile.offline"
SOURCE_DATE_EPOCH = 0


def image_ref(profile: str) -> str:
    return f"{IMAGE_NAME}:{profile}"


def image_env(profile: Profile, vllm_python: str = "${VLLM_PYTHON}") -> dict[str, str]:
    """Every ENV of the image: the offline switches, the appliance's paths, the caches."""
    return {
        **constants.OFFLINE_ENV,
        "APPLIANCE_PROFILE": profile.name,
        "APPLIANCE_MANIFESTS": str(MANIFESTS),
        "APPLIANCE_STORE": str(MODELS_ROOT),
        "APPLIANCE_RUN_DIR": str(RUN_DIR),
        "APPLIANCE_SUPERVISORD_CONF": str(SUPERVISORD_CONF),  # the conf baked below, not one rendered at boot
        "APPLIANCE_VLLM_PYTHON": vllm_python,
        "APPLIANCE_CUDA_VERSION": CUDA_VERSION_FROM_BASE,  # what `appliance doctor` checks the driver against
        "HF_HOME": str(CACHE_DIR / "hf"),
        "VLLM_CACHE_ROOT": str(CACHE_DIR / "vllm"),
        "HOME": str(CACHE_DIR),
        # tini reaps zombies even when it is not PID 1 (`docker run --init`, a shared PID namespace).
        "TINI_SUBREAPER": "1",
        # Last on PATH: `appliance` is found, but `python3` stays the base's (the one with vLLM).
        "PATH": f"${{PATH}}:{VENV}/bin",
    }


def _healthcheck(probes: ProbeValues) -> str:
    check = (
        f"import urllib.request; urllib.request.urlopen({probes.readiness_url!r}, timeout={probes.timeout_seconds - 1})"
    )
    return (
        f"HEALTHCHECK --interval={probes.interval_seconds}s --timeout={probes.timeout_seconds}s "
        f"--start-period={probes.start_period_seconds}s --retries={probes.failure_threshold} \\\n"
        f"    CMD {json.dumps([str(VENV / 'bin/python'), '-c', check])}"
    )


def _env_block(env: dict[str, str]) -> str:
    lines = [f"{key}={json.dumps(value) if ' ' in value else value}" for key, value in env.items()]
    return "ENV " + " \\\n    ".join(lines)


def _user_setup(base: BaseImage) -> str:
    dirs = " ".join(str(d) for d in (RUN_DIR, CACHE_DIR, CACHE_DIR / "hf", CACHE_DIR / "vllm"))
    if not base.non_root:
        return f"RUN mkdir -p {dirs}"
    uid, gid = APPLIANCE_UID, APPLIANCE_GID
    # Written directly (not useradd): no log files, no "last password change" date in /etc/shadow.
    return f"""\
RUN set -eu; \\
    grep -q '^appliance:' /etc/group || echo 'appliance:x:{gid}:' >> /etc/group; \\
    grep -q '^appliance:' /etc/passwd || \\
        echo 'appliance:x:{uid}:{gid}:OCR appliance:{CACHE_DIR}:/usr/sbin/nologin' >> /etc/passwd; \\
    if [ -f /etc/shadow ] && ! grep -q '^appliance:' /etc/shadow; then echo 'appliance:!:::::::' >> /etc/shadow; fi; \\
    mkdir -p {dirs}; \\
    chown {uid}:{gid} {dirs}; \\
    chmod 0750 {RUN_DIR}"""


def render(catalog: Catalog, profile: Profile, base: BaseImage | None = None) -> str:
    """Dockerfile.offline for `profile` (same inputs, same text)."""
    base = base or base_image(profile.base_image)
    probes = probe_values(catalog, profile)
    models = [m.name for m in catalog.profile_models(profile.name)]
    pip = f"{VENV}/bin/pip"
    copies = "\n".join(f"COPY models/{name}/ /" for name in models)
    user = f"USER {APPLIANCE_UID}:{APPLIANCE_GID}\n" if base.non_root else ""
    labels = {
        "org.opencontainers.image.title": "ocr-appliance",
        "org.opencontainers.image.version": __version__,
        "appliance.profile": profile.name,
        BASE_LABEL: base.ref,
        MODELS_LABEL: ",".join(models),
        CUDA_LABEL: CUDA_VERSION_FROM_BASE,
    }
    label_block = "LABEL " + " \\\n      ".join(f"{k}={json.dumps(v)}" for k, v in labels.items())
    # No `# syntax=` line: BuildKit would pull that frontend image from Docker Hub at build time.
    return f"""\
# Dockerfile.offline for profile {profile.name}. Rendered by `appliance image render --profile {profile.name}`:
# do not edit. Built by `appliance image build`, which stages the context this file expects:
#   models/<name>/   one layer per model: the verified store's files + its manifest and lock
#   wheelhouse/      the appliance's third-party wheels + requirements.txt (pip --no-index)
#   code/            the appliance wheel, the profile, supervisord.conf
#   tini-static      Debian's static tini (PID 1)
# No network is used. The base's Python environment (vLLM, torch) is never touched.

ARG BASE_IMAGE={base.ref}

# --- the appliance venv: third-party packages only -------------------------------------------------
FROM ${{BASE_IMAGE}} AS venv
ARG BASE_PYTHON={base.python}
COPY wheelhouse /tmp/wheelhouse
RUN set -eu; \\
    export SOURCE_DATE_EPOCH={SOURCE_DATE_EPOCH} PIP_NO_INDEX=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1; \\
    "$BASE_PYTHON" -m venv {VENV}; \\
    {pip} install --find-links /tmp/wheelhouse -r /tmp/wheelhouse/requirements.txt

# --- the appliance code, laid out under /stage exactly as it lands in the image -------------------
FROM venv AS code
COPY code /tmp/code
RUN set -eu; \\
    export SOURCE_DATE_EPOCH={SOURCE_DATE_EPOCH} PIP_NO_INDEX=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1; \\
    {pip} install --no-deps /tmp/code/*.whl; \\
    {pip} check; \\
    {VENV}/bin/appliance --help >/dev/null; \\
    {pip} install --no-deps --ignore-installed --root /stage /tmp/code/*.whl; \\
    mkdir -p /stage{MANIFESTS.parent} /stage{SUPERVISORD_CONF.parent}; \\
    cp -R /tmp/code/manifests /stage{MANIFESTS}; \\
    cp /tmp/code/supervisord.conf /stage{SUPERVISORD_CONF}; \\
    ln -s {RUN_DIR}/{CTL_CONF} /stage{CTL_DEFAULT}

# --- the image -----------------------------------------------------------------------------------
FROM ${{BASE_IMAGE}}
ARG VLLM_PYTHON={base.vllm_python}
COPY tini-static {TINI}
{_user_setup(base)}

# One layer per model: {MODELS_ROOT}/<name> (read-only) with its manifest and lock under {MANIFESTS}.
# A model update changes only its layer.
{copies}

COPY --from=venv {VENV} {VENV}
COPY --from=code /stage/ /

{_env_block(image_env(profile))}
{user}WORKDIR {CACHE_DIR}
EXPOSE {profile.gateway_port}
{_healthcheck(probes)}
ENTRYPOINT ["{TINI}", "--"]
CMD ["appliance", "boot"]
{label_block}
"""
