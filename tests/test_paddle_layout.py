"""PaddleOCR-VL's layout path through the official pipeline, with the generated PP-DocLayoutV2.

The VL side is a recording fake OpenAI server (no vLLM): it answers each region with the prompt
and the crop's size, so the Markdown and blocks show which crop went with which prompt. That makes
the concurrency test exact and cheap: 64 mixed concurrent requests (PNG and two-page PDFs of
different page sizes; /v1/ocr with layout and single-task, /layout-parsing) must give each page's
structure as read alone. Without the layout guard (`guard_layout_model`) pages of different sizes get layouts
computed with another page's `scale_factor` (DESIGN §14) and the test fails.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from appliance.gateway import paddlex_compat as compat
from appliance.gateway.documents import PageImage
from appliance.gateway.engines import EngineSettings, PaddleOcrVlEngine
from appliance.gateway.engines.paddleocr_vl import _SerializedPredictor, paddle_offline_env
from appliance.gateway.protocol import PageResult, Task
from appliance.gateway.serving import LayoutParsingService, OcrService
from appliance.testing.tiny import layout
from tests.documents_support import blank_pdf

pytest.importorskip("paddlex")


class _Upstream(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = body["messages"][-1]["content"]
        prompt = next(part["text"] for part in content if part["type"] == "text")
        url = next(part["image_url"]["url"] for part in content if part["type"] == "image_url")
        crop = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        self.requests.append({"prompt": prompt, "size": crop.size, "model": body["model"]})
        answer = f"{prompt.rstrip(':')} {crop.width}x{crop.height}"
        message = {"role": "assistant", "content": answer}
        out = json.dumps({
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    handler = type("Handler", (_Upstream,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", handler.requests
    server.shutdown()


@pytest.fixture(scope="module")
def layout_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-paddleocr-vl") / layout.SUBDIR
    out.mkdir()
    for name, data in layout.build_files().items():
        (out / name).write_bytes(data)
    return out


@pytest.fixture  # one per test: the engine's asyncio semaphore belongs to one event loop
def engine(upstream: tuple[str, list[dict[str, Any]]], layout_dir: Path) -> Iterator[PaddleOcrVlEngine]:
    import os

    for key, value in paddle_offline_env().items():
        os.environ.setdefault(key, value)
    settings = EngineSettings(base_url=upstream[0], served_name="PaddleOCR-VL-0.9B", max_concurrency=8)
    engine = PaddleOcrVlEngine(settings, layout_model_dir=layout_dir)
    yield engine
    asyncio.run(engine.aclose())


def _page(width: int, height: int) -> PageImage:
    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).rectangle((width // 10, height // 10, width // 2, height // 5), fill="black")
    return PageImage(1, image)


def _structure(result: PageResult) -> list[tuple[str, list[int] | None, str]]:
    return [(b.category, b.bbox, b.text) for b in result.blocks]


def _expected_blocks(width: int, height: int) -> list[tuple[str, list[int]]]:
    """Label and box of each generated region on a page of this size (PaddleX's labels: doc_title…)."""
    return [(label, [round(x1 * width), round(y1 * height), round(x2 * width), round(y2 * height)])
            for _, label, x1, y1, x2, y2 in layout.REGIONS]  # fmt: skip


def _near(bbox: list[int] | None, box: list[int]) -> bool:
    """Boxes in original-page pixels, within PaddleX's rounding."""
    return bbox is not None and all(abs(a - b) <= 2 for a, b in zip(bbox, box, strict=True))


SIZES = [(620, 877), (1000, 1400), (1400, 1000), (800, 800), (1240, 1754), (500, 700), (900, 1300), (1100, 600)]


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    _page(*size).image.save(buffer, format="PNG")
    return buffer.getvalue()


# (API, document, task): /v1/ocr with layout (the default) and single-task, /layout-parsing
KINDS = [
    ("ocr", "png", Task.layout),
    ("ocr", "pdf", Task.layout),
    ("parsing", "png", Task.layout),
    ("ocr", "png", Task.table),
    ("parsing", "pdf", Task.layout),
    ("ocr", "png", Task.layout),
    ("ocr", "pdf", Task.formula),
    ("ocr", "png", Task.layout),
]


def _document(kind: str, i: int) -> bytes:
    if kind == "png":
        return _png(SIZES[i % len(SIZES)])
    return blank_pdf([SIZES[i % len(SIZES)][::-1], SIZES[(i + 3) % len(SIZES)]])  # two pages, two sizes


async def _read(service: LayoutParsingService, api: str, data: bytes, task: Task) -> list[Any]:
    """The structure of every page's answer: regions, labels, boxes, order, what was read with which prompt."""
    if api == "ocr":
        result = await service.ocr.read(data, engine="paddleocr-vl", task=task, dpi=72)
        return [(p.width, p.height, _structure(p), p.markdown) for p in result.pages]
    from paddlex.inference.serving.infra import models
    from paddlex.inference.serving.schemas import paddleocr_vl

    body = compat.dump(await service.infer(compat.InferRequest(file=base64.b64encode(data).decode())))
    parsed = models.AIStudioResultResponse[paddleocr_vl.InferResult].model_validate(body)  # PaddleX's own models
    pages = []
    for page in parsed.result.layoutParsingResults:
        pruned = page.prunedResult
        regions = [(b["block_label"], b["block_bbox"], b["block_content"], b["block_order"])
                   for b in pruned["parsing_res_list"]]  # fmt: skip
        pages.append((pruned["width"], pruned["height"], regions, page.markdown.text))
    return pages


def test_layout_page_goes_region_by_region_to_the_vl_server(
    engine: PaddleOcrVlEngine, upstream: tuple[str, list[dict[str, Any]]]
) -> None:
    requests = upstream[1]
    requests.clear()
    result = asyncio.run(engine.ocr(_page(1000, 1400), Task.layout))
    categories = [b.category for b in result.blocks]
    assert categories == ["title", "text", "table", "display_formula", "image", "text"]
    for block, (_, box) in zip(result.blocks, _expected_blocks(1000, 1400), strict=True):
        assert _near(block.bbox, box)
    # one request per text-like region with its prompt (the image region is not read); sent concurrently
    prompts = sorted(r["prompt"] for r in requests)
    assert prompts == ["Formula Recognition:", "OCR:", "OCR:", "OCR:", "Table Recognition:"]
    assert {r["model"] for r in requests} == {"PaddleOCR-VL-0.9B"}
    # Markdown in reading order, assembled by PaddleX: doc_title as a heading, the image region linked
    assert result.markdown.split("\n\n") == [
        "# OCR 800x84", "OCR 800x210", "", "Table Recognition 800x294", "Formula Recognition 500x98",
        "![](imgs/img_in_image_box_100_910_450_1260.jpg)", "OCR 350x350",
    ]  # fmt: skip


def test_64_concurrent_mixed_requests_keep_each_pages_structure(
    engine: PaddleOcrVlEngine, upstream: tuple[str, list[dict[str, Any]]]
) -> None:
    service = LayoutParsingService(OcrService({"paddleocr-vl": engine}))
    jobs = [(*KINDS[i % len(KINDS)], i % 11) for i in range(64)]
    docs = {(doc, i): _document(doc, i) for _, doc, _, i in jobs}

    async def alone() -> dict[Any, list[Any]]:
        return {job: await _read(service, job[0], docs[job[1], job[3]], job[2]) for job in sorted(set(jobs))}

    async def together() -> list[list[Any]]:
        return list(await asyncio.gather(*(_read(service, api, docs[doc, i], task) for api, doc, task, i in jobs)))

    expected = asyncio.run(alone())
    for (api, _, task, _), pages in expected.items():
        for width, height, regions, _ in pages:
            if task == Task.layout:  # the layout model's boxes are a function of the page's size
                labels = [r[0] for r in regions]
                title = "doc_title" if api == "parsing" else "title"  # /layout-parsing: PaddleX's labels
                assert labels == [title, "text", "table", "display_formula", "image", "text"], labels
                for region, (_, box) in zip(regions, _expected_blocks(width, height), strict=True):
                    assert _near(region[1], box)
    requests = upstream[1]
    requests.clear()
    results = asyncio.run(together())
    wrong = [job for job, pages in zip(jobs, results, strict=True) if pages != expected[job]]
    assert not wrong, f"{len(wrong)} of 64 requests read with another page's layout: {wrong[:4]}"
    # every text-like region of every page reached the VL server once, with its prompt
    pages = [p for pages in results for p in pages]
    assert len(requests) == sum(len([r for r in regions if r[0] != "image"]) for _, _, regions, _ in pages)
    assert isinstance(engine.pipeline().paddlex_pipeline._pipeline.layout_det_model, _SerializedPredictor)


TASKS = [Task.layout, Task.layout, Task.layout, Task.table]  # mostly layout, the gateway's default


def test_64_concurrent_page_reads_keep_each_pages_structure(engine: PaddleOcrVlEngine) -> None:
    """The race at its sharpest: pages straight to the engine, no decoding in between."""
    jobs = [(SIZES[i % len(SIZES)], TASKS[(i // len(SIZES)) % len(TASKS)]) for i in range(64)]

    async def alone() -> dict[Any, Any]:
        return {job: _structure(await engine.ocr(_page(*job[0]), job[1])) for job in sorted(set(jobs))}

    async def together() -> list[PageResult]:
        return list(await asyncio.gather(*(engine.ocr(_page(*size), task) for size, task in jobs)))

    expected = asyncio.run(alone())
    for (size, task), structure in expected.items():
        if task == Task.layout:  # the layout model's boxes are a function of the page's size
            boxes = [(c, b) for c, b, _ in structure]
            want = _expected_blocks(*size)
            assert [c for c, _ in boxes] == ["title", "text", "table", "display_formula", "image", "text"]
            assert all(_near(got, box) for (_, got), (_, box) in zip(boxes, want, strict=True))
    results = asyncio.run(together())
    wrong = [job for job, result in zip(jobs, results, strict=True) if _structure(result) != expected[job]]
    assert not wrong, f"{len(wrong)} of 64 pages read with another page's layout: {wrong[:4]}"
    assert isinstance(engine.pipeline().paddlex_pipeline._pipeline.layout_det_model, _SerializedPredictor)
