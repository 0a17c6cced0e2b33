"""Deploy files for a profile: a Kubernetes Deployment + Service and a compose file.

Probe timings come from `appliance.probes` (the measured cold starts, the same numbers as the
Dockerfile HEALTHCHECK), so an orchestrator never kills a container in the middle of a normal cold
start; the stop grace from supervisord's own stop timeouts. The committed `deploy/` is the default
profile's, and a test fails when it is stale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from appliance.image.dockerfile import image_ref
from appliance.manifest import Catalog, Profile
from appliance.probes import probe_values
from appliance.runtime.supervisor import stop_grace_seconds

HEADER = "# Rendered by `appliance image deploy --profile {profile}`: do not edit.\n"
SECRETS_DIR = "/run/secrets/appliance"
UID = 10001


def _name(profile: Profile) -> str:
    return f"ocr-appliance-{profile.name}"


def kubernetes(catalog: Catalog, profile: Profile) -> list[dict[str, Any]]:
    probes = probe_values(catalog, profile)
    name = _name(profile)
    labels = {"app.kubernetes.io/name": "ocr-appliance", "app.kubernetes.io/instance": name}

    def probe(path: str, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": "http"},
            "periodSeconds": probes.interval_seconds,
            "timeoutSeconds": probes.timeout_seconds,
            "failureThreshold": failures,
        }

    resources: dict[str, Any] = {"requests": {"memory": "16Gi", "cpu": "4"}}
    if profile.target.device == "cuda":
        resources["limits"] = {"nvidia.com/gpu": 1}
    container = {
        "name": "appliance",
        "image": image_ref(profile.name),
        "imagePullPolicy": "Never",  # loaded with `docker load` / `ctr import`: there is no registry
        "ports": [{"name": "http", "containerPort": profile.gateway_port}],
        "env": [
            {"name": "APPLIANCE_API_KEYS_FILE", "value": f"{SECRETS_DIR}/api-keys"},
            {"name": "APPLIANCE_SUPERVISOR_PASSWORD_FILE", "value": f"{SECRETS_DIR}/supervisor-password"},
        ],
        # Kubernetes waits for /startupz for the whole measured cold start, then liveness/readiness take over.
        "startupProbe": probe(probes.startup_path, probes.startup_failure_threshold),
        "livenessProbe": probe(probes.liveness_path, probes.failure_threshold),
        "readinessProbe": probe(probes.readiness_path, probes.failure_threshold),
        "resources": resources,
        "securityContext": {"runAsUser": UID, "runAsGroup": UID, "allowPrivilegeEscalation": False},
        "volumeMounts": [
            {"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True},
            {"name": "run", "mountPath": "/run/appliance"},
            {"name": "cache", "mountPath": "/var/cache/appliance"},
            {"name": "shm", "mountPath": "/dev/shm"},  # vLLM's workers share tensors through it
        ],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # one GPU: the old pod must free it first
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    # Service env vars named like APPLIANCE_* or VLLM_* would leak into the programs.
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": stop_grace_seconds(catalog, profile),
                    "securityContext": {"fsGroup": UID},
                    "containers": [container],
                    "volumes": [
                        {"name": "secrets", "secret": {"secretName": f"{name}-secrets", "defaultMode": 0o440}},
                        {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                        {"name": "cache", "emptyDir": {"sizeLimit": "20Gi"}},
                        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    return [deployment, service]


def compose(catalog: Catalog, profile: Profile) -> dict[str, Any]:
    probes = probe_values(catalog, profile)
    service: dict[str, Any] = {
        "image": image_ref(profile.name),
        "pull_policy": "never",
        "init": False,  # the image's own tini is PID 1
        "ports": [f"{profile.gateway_port}:{profile.gateway_port}"],
        "environment": {
            "APPLIANCE_API_KEYS_FILE": "/run/secrets/api-keys",
            "APPLIANCE_SUPERVISOR_PASSWORD_FILE": "/run/secrets/supervisor-password",
        },
        "secrets": ["api-keys", "supervisor-password"],
        "shm_size": "8gb",
        "stop_grace_period": f"{stop_grace_seconds(catalog, profile)}s",
        "healthcheck": {
            "test": [
                "CMD",
                "/opt/appliance/venv/bin/python",
                "-c",
                f"import urllib.request; urllib.request.urlopen('{probes.readiness_url}', timeout=4)",
            ],
            "interval": f"{probes.interval_seconds}s",
            "timeout": f"{probes.timeout_seconds}s",
            "retries": probes.failure_threshold,
            "start_period": f"{probes.start_period_seconds}s",
        },
        "restart": "unless-stopped",
    }
    if profile.target.device == "cuda":
        device = {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
        service["deploy"] = {"resources": {"reservations": {"devices": [device]}}}
    return {
        "name": _name(profile),
        "services": {"ocr": service},
        "secrets": {
            "api-keys": {"file": "./secrets/api-keys"},
            "supervisor-password": {"file": "./secrets/supervisor-password"},
        },
    }


def render(catalog: Catalog, profile: Profile) -> dict[str, str]:
    """File name → text of every deploy file of `profile`."""
    head = HEADER.format(profile=profile.name)
    return {
        "kubernetes.yaml": head + "---\n".join(_dump(doc) for doc in kubernetes(catalog, profile)),
        "compose.yaml": head + _dump(compose(catalog, profile)),
    }


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # repeated label maps stay readable, not &id001
        return True


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_NoAliases, sort_keys=False, width=120)


def write(catalog: Catalog, profile: Profile, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render(catalog, profile).items():
        (out / name).write_text(text)
        written.append(out / name)
    return written
