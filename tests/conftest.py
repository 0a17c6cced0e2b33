"""Every test runs isolated from the real home, store and hub caches."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# As in the image (ENV): paddlex reads it once, at import, and any test may be the first to import it.
os.environ.setdefault("PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK", "True")


# `make test` runs on two workers (pytest-xdist, --dist loadfile: a test module runs whole on one
# worker, so its module-scoped fixtures — a booted stack, a private dockerd — run once). The
# heaviest modules (seconds, measured on a CI run) are queued first so both workers finish together.
# (Not --dist loadgroup: with pytest 9, xdist 3.8's group suffix no longer reaches the node ids.)
HEAVY_MODULES = {
    "test_docker_engine": 750, "test_image_build": 600, "test_gateway_stack": 350, "test_runtime_stack": 320,
    "test_gateway_vllm": 260, "test_tiny_models": 210, "test_bundle_delta_images": 90, "test_preflight": 60,
}  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def weight(item: pytest.Item) -> int:
        return HEAVY_MODULES.get(item.path.stem, 0)

    items.sort(key=lambda item: -weight(item))  # stable: a module's own order is kept


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(home / "modelscope"))
    monkeypatch.setenv("APPLIANCE_STORE", str(home / "store"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("APPLIANCE_RUN_DIR", str(home / "run"))  # never /run/appliance
    for var in ("APPLIANCE_PROFILE", "APPLIANCE_SUPERVISOR_PASSWORD_FILE", "APPLIANCE_SUPERVISORD_CONF"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "MODELSCOPE_ENDPOINT", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)


class ManifestDir:
    """A throw-away manifests/ tree: write model and profile YAML, get a Catalog."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("models", "profiles", "locks"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def model(self, name: str, body: str) -> Path:
        path = self.root / "models" / f"{name}.yaml"
        path.write_text(f"name: {name}\n" + textwrap.dedent(body))
        return path

    def profile(self, name: str, body: str) -> Path:
        path = self.root / "profiles" / f"{name}.yaml"
        path.write_text(f"name: {name}\n" + textwrap.dedent(body))
        return path

    def catalog(self):  # type: ignore[no-untyped-def]
        from appliance.manifest import Catalog

        return Catalog(self.root)


@pytest.fixture
def manifests(tmp_path: Path) -> ManifestDir:
    return ManifestDir(tmp_path / "manifests")


def make_files(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


@pytest.fixture
def start_mirror(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Start a local hub mirror (optionally with faults) and point both hub clients at it.

    The fetcher reads HF_ENDPOINT / MODELSCOPE_ENDPOINT at run time; modelscope_hub caches its
    endpoint in a process-wide config, reset here. Every mirror started is stopped at teardown.
    """
    import modelscope_hub.config

    from appliance.mirror import HubMirror

    mirrors: list[HubMirror] = []

    def start(repos, faults=None) -> HubMirror:  # type: ignore[no-untyped-def]
        mirror = HubMirror(repos, faults=faults).start()
        mirrors.append(mirror)
        monkeypatch.setenv("HF_ENDPOINT", mirror.url)
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", mirror.url)
        monkeypatch.setattr(modelscope_hub.config, "_default_config", None)
        return mirror

    yield start
    for mirror in mirrors:
        mirror.stop()
