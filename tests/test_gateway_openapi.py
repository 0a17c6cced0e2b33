"""The gateway's OpenAPI document as a contract, without engines: valid (openapi-spec-validator), no
dangling `$ref`, every route with its request body and every status it can answer, and a client
generated from it without warnings. (The generated client and schemathesis against the real stack:
tests/test_gateway_stack.py.)"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from PIL import Image

from appliance.gateway import ocr_api, openai_proxy, probes
from appliance.gateway.app import create_app
from appliance.manifest import Catalog
from tests import openapi_client
from tests.conftest import REPO

KEY = "test-key"
PROBES = {"/livez", "/readyz", "/startupz"}
# what each route can answer besides 200 (probes: 503 while not ready)
STATUSES = {
    ("post", "/v1/ocr"): {400, 401, 413, 415, 422, 502, 503, 504},
    ("post", "/layout-parsing"): {400, 401, 413, 415, 422, 502, 503, 504},
    ("post", "/v1/chat/completions"): {400, 401, 404, 503, 504},
    ("get", "/v1/models"): {401},
    ("get", "/metrics"): {401},
    ("get", "/readyz"): {503},
    ("get", "/startupz"): {503},
    ("get", "/livez"): set(),
}
BODIES = {
    "/v1/ocr": {"multipart/form-data", "application/json"},
    "/layout-parsing": {"application/json"},
    "/v1/chat/completions": {"application/json"},
}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    where = tmp_path_factory.mktemp("openapi")
    app = create_app(Catalog(REPO / "manifests"), "tiny-cpu", run_dir=where, models_root=where, api_keys=[KEY])
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def spec(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def _resolve(spec: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = spec
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"dangling $ref {ref}"
        node = node[part]
    return node


def test_document_is_valid_openapi(spec: dict[str, Any]) -> None:
    from openapi_spec_validator import validate

    validate(spec)
    assert spec["openapi"].startswith("3.1")
    # openapi-spec-validator 0.9.0 resolves the $refs of responses but not of request bodies (a
    # dangling one there passes): resolve every one.
    _no_dangling_ref(spec)


def _no_dangling_ref(spec: dict[str, Any]) -> None:
    refs = set(_refs(spec))
    assert refs, "the document has no $ref at all: the walk is broken"
    for ref in sorted(refs):
        _resolve(spec, ref)


def test_every_route_documents_its_body_and_statuses(client: TestClient, spec: dict[str, Any]) -> None:
    declared = [*client.app.routes, *probes.router.routes, *ocr_api.router.routes, *openai_proxy.router.routes]
    routes = {(m.lower(), r.path) for r in declared if isinstance(r, APIRoute) for m in r.methods}
    assert routes == set(STATUSES)  # a new route gets its statuses listed here and in the document
    for (method, path), errors in STATUSES.items():
        operation = spec["paths"][path][method]
        documented = {int(s) for s in operation["responses"]}
        assert documented == {200} | errors, (method, path)
        for status, answer in operation["responses"].items():
            assert answer.get("content"), (path, status)  # every answer has its body's schema
        if path in PROBES:
            assert "security" not in operation
        else:
            assert operation["security"] == [{"bearer": []}], path
            assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
        if 503 in errors and path not in PROBES:
            assert "Retry-After" in operation["responses"]["503"]["headers"], path
        if method == "post":
            body = operation["requestBody"]
            assert body["required"] and set(body["content"]) == BODIES[path], path
    assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    chat = spec["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(chat) == {"application/json", "text/event-stream"}  # streaming is its own content type


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 32), "white").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "body",
    [
        {"file": "x", "dpi": "72"},  # a string where the schema says integer
        {"file": "x", "dpi": True},
        {"file": "x", "engine": "tesseract"},
        {"file": "x", "task": "poetry"},
        {"file": "x", "pages": "first"},
        {"file": "x", "shade": 1},  # additionalProperties: false
        {"file": "x", "engine": "dots-ocr", "task": "chart"},  # the engine lacks the task
        {"file": ""},
    ],
)
def test_what_the_schema_forbids_is_refused(client: TestClient, spec: dict[str, Any], body: dict[str, Any]) -> None:
    from jsonschema import Draft202012Validator

    schemas = {"components": spec["components"]}
    validator = Draft202012Validator({"$ref": "#/components/schemas/OcrJsonRequest"} | schemas)
    assert not validator.is_valid(body)  # the case really is outside the document
    body = body | ({"file": base64.b64encode(_png()).decode()} if body["file"] == "x" else {})
    answer = client.post("/v1/ocr", headers={"Authorization": f"Bearer {KEY}"}, json=body)
    assert 400 <= answer.status_code < 500, (body, answer.text)


def test_generated_client(spec: dict[str, Any], tmp_path: Path) -> None:
    package = openapi_client.generate(spec, tmp_path)
    assert hasattr(package, "AuthenticatedClient")
    for module in ("api.ocr.ocr", "api.ocr.layout_parsing", "api.open_ai_compatible.list_models",
                   "api.open_ai_compatible.chat_completions", "models.ocr_upload", "models.ocr_json_request",
                   "models.infer_request"):  # fmt: skip
        openapi_client.submodule(module)
    assert json.dumps(spec)  # the document round-trips as JSON


def test_readme_links_every_route_to_its_documented_operation(spec: dict[str, Any]) -> None:
    from urllib.parse import unquote

    readme = (REPO / "README.md").read_text()
    linked = {tuple(unquote(m).split("/")) for m in re.findall(r"localhost:8080/docs#/([^)\s]+)", readme)}
    documented = {
        (op.get("tags", ["default"])[0], op["operationId"]) for item in spec["paths"].values() for op in item.values()
    }
    assert linked == documented  # Swagger's deep links are #/<first tag>/<operationId>
    section = readme.split("## The REST API")[1].split("\n## ")[0]
    names = set(re.findall(r"`([A-Z]\w*[a-z]\w*)`", section))
    assert len(names) >= 10 and names <= set(spec["components"]["schemas"]), names - set(spec["components"]["schemas"])


@pytest.mark.parametrize(
    "change",
    [{"stream": 0}, {"max_tokens": "8"}, {"max_tokens": True}, {"messages": [{"role": "robot"}]}, {"messages": {}}],
)
def test_chat_body_the_schema_forbids_never_reaches_the_engine(client: TestClient, change: dict[str, Any]) -> None:
    body = {"model": "dots-ocr", "messages": [{"role": "user", "content": "hi"}]} | change
    answer = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, json=body)
    assert answer.status_code == 400 and "invalid request" in answer.json()["error"]["message"], answer.text
