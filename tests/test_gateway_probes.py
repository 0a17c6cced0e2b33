"""Gateway probes against fake engines on loopback (real HTTP, no vLLM)."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from appliance.gateway.app import create_app
from appliance.manifest import Catalog
from appliance.runtime import phases
from tests.conftest import REPO


class FakeEngine:
    """Answers /health with `health` and /v1/models with `models`, like vLLM's OpenAI server."""

    def __init__(self, served_name: str) -> None:
        self.health = 200
        self.models = [served_name]
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/health":
                    self.send_response(engine.health)
                    self.end_headers()
                elif self.path == "/v1/models":
                    body = json.dumps({"object": "list", "data": [{"id": m} for m in engine.models]}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_response(404)
                    self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, FakeEngine], Path]]:
    root = tmp_path / "manifests"
    shutil.copytree(REPO / "manifests", root)
    catalog = Catalog(root)
    engines = {
        m.model: FakeEngine(catalog.model(m.model).serve.served_model_name) for m in catalog.profile("tiny-cpu").models
    }  # type: ignore[union-attr]
    path = root / "profiles" / "tiny-cpu.yaml"
    data = yaml.safe_load(path.read_text())
    for entry in data["models"]:
        entry["port"] = engines[entry["model"]].port
    engines["tiny-dots-ocr"].models = []  # dots is up but lists nothing yet
    path.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    with TestClient(create_app(Catalog(root), "tiny-cpu", run)) as client:
        yield client, engines, run
    for engine in engines.values():
        engine.close()


def test_livez(setup: tuple[TestClient, dict[str, FakeEngine], Path]) -> None:
    client, _, _ = setup
    assert client.get("/livez").status_code == 200


def test_readyz(setup: tuple[TestClient, dict[str, FakeEngine], Path]) -> None:
    client, engines, _ = setup
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 503 and not body["ready"]
    dots = next(e for e in body["engines"] if e["model"] == "tiny-dots-ocr")
    assert dots["health"] == 200 and not dots["listed"] and "not 'dots-ocr'" in dots["error"]

    engines["tiny-dots-ocr"].models = ["dots-ocr"]
    engines["tiny-qwen3-vl"].health = 503  # optional, not healthy: degraded, still ready
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["degraded"] == ["tiny-qwen3-vl"]

    engines["tiny-paddleocr-vl"].close()  # essential engine's port refuses connections
    response = client.get("/readyz")
    assert response.status_code == 503
    paddle = next(e for e in response.json()["engines"] if e["model"] == "tiny-paddleocr-vl")
    assert paddle["health"] is None and paddle["error"].startswith("ConnectError")


def test_startupz(setup: tuple[TestClient, dict[str, FakeEngine], Path]) -> None:
    client, _, run = setup
    response = client.get("/startupz")
    assert response.status_code == 503
    assert [m["phase"] for m in response.json()["models"]] == ["pending"] * 3
    phases.write_phase("tiny-paddleocr-vl", "ready", run_dir=run)
    phases.write_phase("tiny-dots-ocr", "loading", run_dir=run, now=0.0)
    body = client.get("/startupz").json()
    assert [(m["model"], m["phase"]) for m in body["models"]] == [
        ("tiny-paddleocr-vl", "ready"),
        ("tiny-dots-ocr", "loading"),
        ("tiny-qwen3-vl", "pending"),
    ]
    assert body["models"][1]["seconds"] > 1e9  # since the epoch, as written
    phases.write_phase("tiny-dots-ocr", "ready", run_dir=run)
    response = client.get("/startupz")  # optional qwen still pending: started all the same
    assert response.status_code == 200 and response.json()["started"]
