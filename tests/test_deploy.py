"""deploy/ is generated from the profile and kept fresh; its probes never cut a cold start short."""

from __future__ import annotations

import yaml

from appliance.image.deploy import render
from appliance.manifest import Catalog
from appliance.probes import probe_values
from tests.conftest import REPO

CATALOG = Catalog(REPO / "manifests")


def test_committed_deploy_files_are_fresh() -> None:
    """Regenerate with: appliance image deploy"""
    for name, text in render(CATALOG, CATALOG.profile("tiny-cpu")).items():
        assert (REPO / "deploy" / name).read_text() == text, f"deploy/{name} is stale: run appliance image deploy"


def test_kubernetes_probes_cover_the_measured_cold_start() -> None:
    for profile_name in CATALOG.profile_names():
        profile = CATALOG.profile(profile_name)
        deployment, service = yaml.safe_load_all(render(CATALOG, profile)["kubernetes.yaml"])
        spec = deployment["spec"]["template"]["spec"]
        assert spec["enableServiceLinks"] is False and deployment["spec"]["strategy"]["type"] == "Recreate"
        container = spec["containers"][0]
        startup = container["startupProbe"]
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        assert budget >= probe_values(CATALOG, profile).cold_start_seconds * 1.5, profile_name
        assert startup["httpGet"]["path"] == "/startupz" and container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        gpu = container["resources"].get("limits", {}).get("nvidia.com/gpu")
        assert gpu == (1 if profile.target.device == "cuda" else None)
        assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_compose_healthcheck_matches_the_image() -> None:
    profile = CATALOG.profile("gpu-24gb")
    compose = yaml.safe_load(render(CATALOG, profile)["compose.yaml"])
    service = compose["services"]["ocr"]
    assert service["healthcheck"]["start_period"] == f"{probe_values(CATALOG, profile).start_period_seconds}s"
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert service["pull_policy"] == "never"
    dockerfile = (REPO / "Dockerfile.offline").read_text()
    tiny = yaml.safe_load(render(CATALOG, CATALOG.profile("tiny-cpu"))["compose.yaml"])["services"]["ocr"]
    assert f"--start-period={tiny['healthcheck']['start_period']}" in dockerfile
