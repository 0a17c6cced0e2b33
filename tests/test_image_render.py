"""Dockerfile.offline rendering, base properties and probe timings (fast)."""

from __future__ import annotations

import re

import pytest

from appliance import constants
from appliance.image.bases import CI_BASE_IMAGE, base_image
from appliance.image.dockerfile import render
from appliance.manifest import Catalog
from appliance.probes import MARGIN_SECONDS, SAFETY_FACTOR, probe_values, start_period_seconds
from tests.conftest import REPO


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(REPO / "manifests")


def test_committed_dockerfile_is_fresh(catalog: Catalog) -> None:
    committed = (REPO / "Dockerfile.offline").read_text()
    expected = render(catalog, catalog.profile(constants.DEFAULT_PROFILE))
    assert committed == expected, "Dockerfile.offline is stale: run `appliance image render -o Dockerfile.offline`"


def test_one_copy_per_model_before_the_code(catalog: Catalog) -> None:
    text = render(catalog, catalog.profile("tiny-cpu"))
    final = text[text.index("# --- the image") :]
    copies = re.findall(r"^COPY models/([a-z0-9-]+)/ /$", final, re.M)
    assert copies == ["tiny-paddleocr-vl", "tiny-dots-ocr", "tiny-qwen3-vl"]
    order = [final.index(s) for s in ("COPY tini-static", "COPY models/", "COPY --from=venv", "COPY --from=code")]
    assert order == sorted(order), "setup, then models, then deps, then code"
    # Nothing that changes with the code or the profile comes before the model layers.
    assert final.index("ENV ") > final.index("COPY --from=code")


def test_layout_models_get_their_own_layer(catalog: Catalog) -> None:
    text = render(catalog, catalog.profile("gpu-80gb"))
    names = [m.name for m in catalog.profile_models("gpu-80gb")]
    assert re.findall(r"^COPY models/([a-z0-9-]+)/ /$", text, re.M) == names
    assert "pp-doclayoutv3" in names


def test_env_offline_switches_and_paths(catalog: Catalog) -> None:
    text = render(catalog, catalog.profile("tiny-cpu"))
    env = dict(re.findall(r"^(?:ENV |    )([A-Z_]+)=(\S+?)(?: \\)?$", text, re.M))
    for key, value in constants.OFFLINE_ENV.items():
        assert env[key] == value
    assert env["APPLIANCE_PROFILE"] == "tiny-cpu"
    assert env["APPLIANCE_MANIFESTS"] == "/opt/appliance/manifests"
    assert env["APPLIANCE_STORE"] == "/models"
    assert env["APPLIANCE_RUN_DIR"] == "/run/appliance"
    assert env["APPLIANCE_VLLM_PYTHON"] == "${VLLM_PYTHON}"
    assert env["HF_HOME"] == "/var/cache/appliance/hf"
    assert env["VLLM_CACHE_ROOT"] == "/var/cache/appliance/vllm"
    # The venv goes last on PATH: `python3` must stay the base's interpreter (the one with vLLM).
    assert env["PATH"] == "${PATH}:/opt/appliance/venv/bin"
    assert "ARG VLLM_PYTHON=/opt/vllm/bin/python" in text
    assert 'ENTRYPOINT ["/usr/local/bin/tini", "--"]' in text
    assert 'CMD ["appliance", "boot"]' in text
    assert "USER 10001:10001" in text


def test_production_base_properties(catalog: Catalog) -> None:
    text = render(catalog, catalog.profile("gpu-24gb"))
    assert "ARG BASE_IMAGE=docker.io/vllm/vllm-openai:v0.33.0" in text
    assert "ARG VLLM_PYTHON=python3" in text
    base = base_image("vllm/vllm-openai:v0.33.0")
    assert (base.python_version, base.vllm_python) == ("3.12", "python3")
    assert base.platforms[0] == "manylinux_2_35_x86_64" and "manylinux2014_x86_64" in base.platforms
    ci = base_image(CI_BASE_IMAGE)
    assert (ci.python_version, ci.vllm_python, ci.python_tag) == ("3.11", "/opt/vllm/bin/python", "cp311")
    custom = base_image("registry.site/vllm:1", vllm_python="/venv/bin/python", python_version="3.10")
    assert (custom.ref, custom.vllm_python, custom.python_version) == (
        "registry.site/vllm:1",
        "/venv/bin/python",
        "3.10",
    )


def test_healthcheck_start_period_from_cold_starts(catalog: Catalog) -> None:
    profile = catalog.profile("tiny-cpu")
    probes = probe_values(catalog, profile)
    cold = sum(catalog.model(m.model).resources.cold_start_seconds for m in profile.models)
    assert probes.cold_start_seconds == cold == 230
    assert probes.start_period_seconds == start_period_seconds(cold) == 380
    assert probes.start_period_seconds >= cold * SAFETY_FACTOR + MARGIN_SECONDS
    assert probes.startup_failure_threshold * probes.interval_seconds >= probes.start_period_seconds
    text = render(catalog, profile)
    assert "--start-period=380s" in text
    assert "http://127.0.0.1:8080/readyz" in text


def test_layout_models_do_not_count_as_cold_starts(catalog: Catalog) -> None:
    profile = catalog.profile("gpu-80gb")
    served = [m.model for m in profile.models if catalog.model(m.model).serve is not None]
    expected = sum(catalog.model(m).resources.cold_start_seconds for m in served)
    assert probe_values(catalog, profile).cold_start_seconds == expected


def test_start_period_rounds_up_to_ten_seconds() -> None:
    assert start_period_seconds(0) == MARGIN_SECONDS
    assert start_period_seconds(1) % 10 == 0
    assert start_period_seconds(100) == 180


def test_render_cli_check(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from appliance.cli import app

    stale = tmp_path / "Dockerfile.offline"
    stale.write_text("FROM scratch\n")
    runner = CliRunner()
    result = runner.invoke(app, ["image", "render", "-o", str(stale), "--check"])
    assert result.exit_code != 0 and "stale" in str(result.exception)
    assert runner.invoke(app, ["image", "render", "-o", str(stale)]).exit_code == 0
    assert runner.invoke(app, ["image", "render", "-o", str(stale), "--check"]).exit_code == 0
