"""The OpenAI pass-through's forwarding, against a recording HTTP upstream on 127.0.0.1: what reaches
the engine, what comes back, what is counted; and a page whose answer was cut at the token cap.
(Against real vLLM servers: tests/test_gateway_stack.py.)"""

from __future__ import annotations

import io
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from appliance.gateway.app import create_app
from appliance.gateway.openai_proxy import _usage
from appliance.manifest import Catalog
from tests.conftest import REPO

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": 'say "usage": 99'}}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
}


class Upstream(ThreadingHTTPServer):
    """Records every request body; answers `answer` (default `ANSWER`), or hangs up mid-answer when `broken`."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.answer: dict[str, object] = ANSWER
        self.broken = False
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: Upstream

    def do_POST(self) -> None:
        self.server.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        payload = json.dumps(self.server.answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload[: len(payload) // 2] if self.server.broken else payload)
        self.close_connection = self.server.broken

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def client(tmp_path: Path, upstream: Upstream) -> Iterator[TestClient]:
    """tiny-cpu, with its Qwen3-VL engine at the recording upstream's port."""
    shutil.copytree(REPO / "manifests", tmp_path / "manifests")
    path = tmp_path / "manifests" / "profiles" / "tiny-cpu.yaml"
    data = yaml.safe_load(path.read_text())
    for entry in data["models"]:
        if entry["model"] == "tiny-qwen3-vl":
            entry["port"] = upstream.server_address[1]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    catalog = Catalog(tmp_path / "manifests")
    app = create_app(catalog, "tiny-cpu", run_dir=tmp_path, models_root=tmp_path, api_keys=[KEY])
    with TestClient(app) as test_client:
        yield test_client


def _served_name(client: TestClient) -> str:
    upstreams = client.app.state.upstreams  # type: ignore[attr-defined]
    return next(u.served_name for u in upstreams.all if u.engine == "qwen3-vl")


def test_body_forwarded_byte_for_byte_and_answer_relayed(client: TestClient, upstream: Upstream) -> None:
    raw = b'{"model": "%s",  "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}'
    raw %= _served_name(client).encode()
    answer = client.post("/v1/chat/completions", headers=AUTH | {"Content-Type": "application/json"}, content=raw)
    assert answer.status_code == 200 and answer.json() == ANSWER
    assert upstream.bodies == [raw]  # not re-serialised: the odd spacing survives
    metrics = client.get("/metrics", headers=AUTH).text
    assert 'appliance_tokens_total{engine="qwen3-vl",kind="prompt"} 7.0' in metrics
    assert 'appliance_tokens_total{engine="qwen3-vl",kind="completion"} 3.0' in metrics


def test_client_processor_kwargs_never_reach_the_engine(client: TestClient, upstream: Upstream) -> None:
    body = {"model": _served_name(client), "messages": [], "mm_processor_kwargs": {"max_pixels": 10**9}}
    assert client.post("/v1/chat/completions", headers=AUTH, json=body).status_code == 200
    forwarded = json.loads(upstream.bodies[0])
    assert "mm_processor_kwargs" not in forwarded and forwarded["model"] == body["model"]


def test_engine_hanging_up_mid_answer_is_503_not_500(client: TestClient, upstream: Upstream) -> None:
    upstream.broken = True
    body = {"model": _served_name(client), "messages": []}
    answer = client.post("/v1/chat/completions", headers=AUTH, json=body)
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert "closed the connection" in answer.json()["error"]["message"]
    assert 'reason="broken"' in client.get("/metrics", headers=AUTH).text


@pytest.mark.parametrize(
    ("content", "usage"),
    [
        (json.dumps(ANSWER).encode(), ANSWER["usage"]),
        (b'{"choices": [{"message": {"content": "\\"usage\\": 5"}}]}', None),  # quoted in the text only
        (b'{"usage": null}', None),
        (b'{"usage": {"prompt_tokens": 1', None),  # truncated
        (b"", None),
    ],
)
def test_usage_read_from_the_answers_tail(content: bytes, usage: object) -> None:
    assert _usage(content) == usage


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 32), "white").save(buffer, "PNG")
    return buffer.getvalue()


def test_page_cut_at_the_token_cap_is_marked_and_counted(client: TestClient, upstream: Upstream) -> None:
    """No silent truncation: finish_reason "length" → the page's warnings say so, /metrics counts it."""
    choice = {"index": 0, "message": {"role": "assistant", "content": "Line one\n\nLine tw"}, "finish_reason": "length"}
    upstream.answer = {"choices": [choice]}

    def read() -> dict:  # type: ignore[type-arg]
        form = {"engine": "qwen3-vl", "task": "text"}
        answer = client.post("/v1/ocr", headers=AUTH, files={"file": ("p.png", _png())}, data=form)
        assert answer.status_code == 200, answer.text
        (page,) = answer.json()["pages"]
        return page

    warning = read()["warnings"][0]
    assert warning.startswith("truncated:") and "output cap of 32 tokens" in warning
    assert json.loads(upstream.bodies[0])["max_tokens"] == 32  # tiny-cpu's cap
    upstream.answer = {"choices": [choice | {"finish_reason": "stop"}]}
    assert read()["warnings"] == []
    metrics = client.get("/metrics", headers=AUTH).text
    assert 'appliance_truncated_pages_total{engine="qwen3-vl"} 1.0' in metrics
    assert 'appliance_pages_total{engine="qwen3-vl"} 2.0' in metrics
