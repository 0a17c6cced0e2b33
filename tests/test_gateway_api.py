"""The gateway's routes without engines running: auth, routing, typed errors, metrics, OpenAPI.
(With real vLLM servers behind it: tests/test_gateway_stack.py.)"""

from __future__ import annotations

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from appliance.gateway.app import create_app
from appliance.manifest import Catalog
from tests.conftest import REPO

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def client(tmp_path):  # type: ignore[no-untyped-def]
    # tiny-cpu's ports: nothing listens there during unit tests, so every engine is "starting".
    app = create_app(Catalog(REPO / "manifests"), "tiny-cpu", run_dir=tmp_path, models_root=tmp_path, api_keys=[KEY])
    with TestClient(app) as test_client:
        yield test_client


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 32), "white").save(buffer, "PNG")
    return buffer.getvalue()


def test_probes_are_open_everything_else_needs_the_key(client: TestClient) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 503  # nothing is up: not ready, and says so
    for method, path in [("get", "/v1/models"), ("post", "/v1/chat/completions"), ("post", "/v1/ocr"),
                         ("post", "/layout-parsing"), ("get", "/metrics")]:  # fmt: skip
        denied = client.request(method, path)
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer", path
        assert client.request(method, path, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_generated_key_when_none_is_configured(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    from appliance import constants

    app = create_app(Catalog(REPO / "manifests"), "tiny-cpu", models_root=tmp_path)
    key_file = constants.run_dir() / "api-key"
    assert key_file.is_file() and oct(key_file.stat().st_mode & 0o777) == "0o600"
    with TestClient(app) as test_client:
        ok = test_client.get("/metrics", headers={"Authorization": f"Bearer {key_file.read_text().strip()}"})
        assert ok.status_code == 200
    assert os.environ.get("APPLIANCE_API_KEYS") is None


def test_unknown_model_lists_the_known_ones(client: TestClient) -> None:
    answer = client.post("/v1/chat/completions", headers=AUTH, json={"model": "gpt-4", "messages": []})
    assert answer.status_code == 404
    message = answer.json()["error"]["message"]
    assert all(name in message for name in ("PaddleOCR-VL-0.9B", "dots-ocr", "Qwen3-VL-tiny"))


def test_engine_not_ready_is_503_with_retry_after(client: TestClient) -> None:
    answer = client.post("/v1/chat/completions", headers=AUTH, json={"model": "dots-ocr", "messages": []})
    assert answer.status_code == 503 and int(answer.headers["retry-after"]) > 0
    png = base64.b64encode(_png()).decode()
    for engine in ("auto", "dots-ocr"):
        ocr = client.post("/v1/ocr", headers=AUTH, json={"file": png, "engine": engine})
        assert ocr.status_code == 503 and int(ocr.headers["retry-after"]) > 0, ocr.text


def test_remote_image_urls_are_refused(client: TestClient) -> None:
    body = {
        "model": "dots-ocr",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}],
    }
    answer = client.post("/v1/chat/completions", headers=AUTH, json=body)
    assert answer.status_code == 400 and "data: URLs" in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    ("kwargs", "status", "words"),
    [
        ({"files": {"file": ("x.png", b"not an image")}}, 415, ""),
        ({"json": {"file": "%%%"}}, 400, "base64"),
        ({"json": {"file": base64.b64encode(b"%PDF-1.7 broken").decode()}}, 400, ""),
        ({"json": {"file": "aGVsbG8=", "task": "poetry"}}, 422, "task"),
        ({"files": {"file": ("x.png", _png())}, "data": {"dpi": "5000"}}, 422, "dpi"),
        ({"content": b"raw", "headers": {"content-type": "text/plain"}}, 400, "multipart"),
    ],
)
def test_bad_requests_are_4xx_with_a_clear_message(client: TestClient, kwargs, status, words) -> None:  # type: ignore[no-untyped-def]
    headers = AUTH | kwargs.pop("headers", {})
    answer = client.post("/v1/ocr", headers=headers, **kwargs)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]["message"]


def test_layout_parsing_errors_use_paddlex_envelope(client: TestClient) -> None:
    answer = client.post("/layout-parsing", headers=AUTH, json={"file": "http://example.com/a.pdf", "fileType": 0})
    body = answer.json()
    assert answer.status_code >= 400 and body["errorCode"] == answer.status_code and body["errorMsg"] and body["logId"]


def test_metrics_count_requests_by_route(client: TestClient) -> None:
    client.post("/v1/chat/completions", headers=AUTH, json={"model": "nope", "messages": []})
    text = client.get("/metrics", headers=AUTH).text
    assert 'appliance_requests_total{method="POST",route="/v1/chat/completions",status="404"} 1.0' in text
    assert "appliance_request_seconds_bucket" in text and "appliance_engine_in_flight" in text


def test_openapi_documents_both_upload_forms(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/ocr"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert "/layout-parsing" in spec["paths"] and "/v1/chat/completions" in spec["paths"]
    assert client.get("/docs").status_code == 200
