"""/layout-parsing models against PaddleX 3.7.2's own serving schema, and the services behind them."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import pydantic
import pypdfium2 as pdfium
import pytest
from PIL import Image

from appliance.errors import DocumentError, TaskNotSupportedError
from appliance.gateway import paddlex_compat as compat
from appliance.gateway.documents import Limits, PageImage
from appliance.gateway.engines.base import Engine, EngineSettings
from appliance.gateway.protocol import Block, PageResult, Task
from appliance.gateway.serving import LayoutParsingService, OcrService, UnknownEngineError


def _paddlex():
    from paddlex.inference.serving.infra import models
    from paddlex.inference.serving.schemas import paddleocr_vl

    return paddleocr_vl, models


def _fields(model: type[pydantic.BaseModel]) -> dict[str, tuple[bool, Any]]:
    return {name: (f.is_required(), f.get_default()) for name, f in model.model_fields.items()}


@pytest.mark.parametrize(
    "ours,theirs",
    [
        ("InferRequest", "InferRequest"),
        ("InferResult", "InferResult"),
        ("LayoutParsingResult", "LayoutParsingResult"),
        ("MarkdownData", "MarkdownData"),
    ],
)
def test_same_fields_and_defaults_as_paddlex(ours: str, theirs: str) -> None:
    paddleocr_vl, _ = _paddlex()
    assert _fields(getattr(compat, ours)) == _fields(getattr(paddleocr_vl, theirs))


def test_same_envelope_and_data_info_as_paddlex() -> None:
    _, models = _paddlex()
    for name in ("AIStudioNoResultResponse", "ImageInfo", "PDFPageInfo", "PDFInfo", "TIFFInfo"):
        assert _fields(getattr(compat, name)) == _fields(getattr(models, name)), name
    assert set(compat.AIStudioResultResponse.model_fields) == set(models.AIStudioResultResponse.model_fields)
    assert compat.INFER_ENDPOINT == "/layout-parsing"


@pytest.mark.parametrize(
    "body",
    [
        {"file": "x", "topP": 0},
        {"file": "x", "temperature": -1},
        {"file": "x", "repetitionPenalty": 0},
        {"file": "x", "promptLabel": "poem"},
        {"file": "x", "minPixels": 10, "maxPixels": 5},
        {"file": "x", "outputFormats": ["pdf"]},
        {"file": "x", "layoutThreshold": 2},
        {"file": "x", "layoutMergeBboxesMode": "biggest"},
        {"file": "x", "layoutShapeMode": "circle"},
        {"file": "x", "fileType": 2},
        {},
    ],
)
def test_same_validation_as_paddlex(body: dict[str, Any]) -> None:
    paddleocr_vl, _ = _paddlex()
    with pytest.raises(pydantic.ValidationError):
        paddleocr_vl.InferRequest.model_validate(body)
    with pytest.raises(pydantic.ValidationError):
        compat.InferRequest.model_validate(body)


def test_valid_request_parses_alike() -> None:
    paddleocr_vl, _ = _paddlex()
    body = {"file": "eA==", "fileType": 1, "useLayoutDetection": False, "promptLabel": "table", "layoutThreshold": 0.5,
            "layoutMergeBboxesMode": {"0": "large"}, "visualize": False, "logId": "abc"}  # fmt: skip
    assert (
        compat.InferRequest.model_validate(body).model_dump()
        == paddleocr_vl.InferRequest.model_validate(body).model_dump()
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _png(size: tuple[int, int] = (120, 80)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "white").save(buf, format="PNG")
    return buf.getvalue()


def _pdf(pages: int) -> bytes:
    pdf = pdfium.PdfDocument.new()
    for _ in range(pages):
        pdf.new_page(200, 100)
    buf = io.BytesIO()
    pdf.save(buf)
    return buf.getvalue()


def test_decode_file() -> None:
    png = _png()
    assert compat.decode_file(compat.InferRequest(file=_b64(png)), 10**6) == png
    assert compat.decode_file(compat.InferRequest(file="data:image/png;base64," + _b64(png)), 10**6) == png
    with pytest.raises(DocumentError, match="offline"):
        compat.decode_file(compat.InferRequest(file="https://example.org/a.pdf"), 10**6)
    with pytest.raises(DocumentError, match="fileType"):
        compat.decode_file(compat.InferRequest(file=_b64(png), fileType=0), 10**6)
    with pytest.raises(DocumentError, match="fileType"):
        compat.decode_file(compat.InferRequest(file=_b64(_pdf(1)), fileType=1), 10**6)
    with pytest.raises(DocumentError, match="more than 10 bytes"):
        compat.decode_file(compat.InferRequest(file=_b64(png)), 10)


def test_task_of() -> None:
    assert compat.task_of(compat.InferRequest(file="x")) == Task.layout
    assert compat.task_of(compat.InferRequest(file="x", useLayoutDetection=False)) == Task.text
    req = compat.InferRequest(file="x", useLayoutDetection=False, promptLabel="formula")
    assert compat.task_of(req) == Task.formula
    assert compat.task_of(compat.InferRequest(file="x", promptLabel="chart"), has_layout=False) == Task.chart
    with pytest.raises(TaskNotSupportedError):
        compat.task_of(compat.InferRequest(file="x", useLayoutDetection=False, promptLabel="seal"))


class StubEngine(Engine):
    """Answers every page with two blocks, one with a box: enough to exercise the services."""

    kind = "dots-ocr"
    tasks = frozenset({Task.text, Task.layout, Task.table})

    def __init__(self, **kw: Any) -> None:
        super().__init__(EngineSettings(base_url="http://127.0.0.1:9", served_name="stub", **kw))
        self.seen: list[tuple[int, Task]] = []

    async def _read(self, page: PageImage, task: Task) -> PageResult:
        self.seen.append((page.number, task))
        await asyncio.sleep(0.01 * (5 - page.number % 5))  # finish out of order
        blocks = [
            Block(bbox=[1, 2, 30, 40], category="title", text=f"# Page {page.number}"),
            Block(category="table", text="| a |\n|---|", html="<table><tr><td>a</td></tr></table>"),
        ]
        return self._result(page, task, f"# Page {page.number}", blocks)


def test_ocr_service_reads_pages_in_order() -> None:
    engine = StubEngine(max_concurrency=2)
    service = OcrService({"dots-ocr": engine})
    result = asyncio.run(service.read(_pdf(5), task=Task.layout, dpi=72, page_range="2-4"))
    assert (result.kind, result.total_pages, result.engine, result.model) == ("pdf", 5, "dots-ocr", "stub")
    assert [p.page for p in result.pages] == [2, 3, 4]
    assert result.markdown == "# Page 2\n\n---\n\n# Page 3\n\n---\n\n# Page 4"
    assert set(result.timings) == {"decode", "ocr", "total"}
    with pytest.raises(UnknownEngineError, match="configured: dots-ocr"):
        asyncio.run(service.read(_png(), engine="nope"))
    with pytest.raises(TaskNotSupportedError):
        asyncio.run(service.read(_png(), task=Task.chart))
    with pytest.raises(DocumentError):
        asyncio.run(OcrService({"e": engine}, limits=Limits(max_pages=2)).read(_pdf(3)))


def test_layout_parsing_response_validates_against_paddlex() -> None:
    paddleocr_vl, models = _paddlex()
    service = LayoutParsingService(OcrService({"dots-ocr": StubEngine()}))
    request = compat.InferRequest(file=_b64(_pdf(2)), fileType=0, logId="log-1")
    response = asyncio.run(service.infer(request))
    body = compat.dump(response)
    assert body["logId"] == "log-1" and body["errorCode"] == 0 and body["errorMsg"] == "Success"
    parsed = models.AIStudioResultResponse[paddleocr_vl.InferResult].model_validate(body)
    assert parsed.result.dataInfo.type == "pdf" and parsed.result.dataInfo.numPages == 2
    first = body["result"]["layoutParsingResults"][0]
    assert "outputImages" not in first and "inputImage" not in first  # exclude_none, like PaddleX
    assert first["markdown"] == {"text": "# Page 1", "images": {}}
    pruned = first["prunedResult"]
    assert pruned["page_count"] == 2 and (pruned["width"], pruned["height"]) == (400, 200)
    assert pruned["model_settings"]["use_layout_detection"] is True
    assert pruned["parsing_res_list"][0] == {
        "block_label": "doc_title",
        "block_content": "# Page 1",
        "block_bbox": [1, 2, 30, 40],
        "block_id": 0,
        "block_order": 1,
        "group_id": 0,
    }
    table = pruned["parsing_res_list"][1]
    assert table["block_content"].startswith("<table>") and table["block_bbox"] == [0, 0, 400, 200]
    assert table["block_order"] is None

    image = compat.dump(asyncio.run(service.infer(compat.InferRequest(file=_b64(_png()), returnMarkdownImages=False))))
    assert image["result"]["dataInfo"] == {"width": 120, "height": 80, "type": "image"}
    assert "images" not in image["result"]["layoutParsingResults"][0]["markdown"]
    assert image["result"]["layoutParsingResults"][0]["prunedResult"]["page_count"] is None


def test_error_envelope() -> None:
    _, models = _paddlex()
    body = compat.dump(compat.error_response(422, "Invalid input file"))
    assert models.AIStudioNoResultResponse.model_validate(body).errorCode == 422
