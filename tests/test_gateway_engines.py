"""Engine adapters on recorded real-format outputs (no server): parsing, rescaling, errors, limits."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from appliance.errors import EngineError, EngineTimeout, EngineUnavailable, TaskNotSupportedError
from appliance.gateway.documents import PageImage
from appliance.gateway.engines import DotsOcrEngine, EngineSettings, PaddleOcrVlEngine, Qwen3VlEngine, build_engine
from appliance.gateway.engines.base import is_truncated, truncation_warning
from appliance.gateway.engines.dots_ocr import (
    IMAGE_PLACEHOLDER,
    PROMPT_LAYOUT_ALL,
    PROMPT_OCR,
    parse_cells,
    smart_resize,
)
from appliance.gateway.engines.paddleocr_vl import _translate, convert_result
from appliance.gateway.engines.qwen3_vl import parse_qwenvl_html
from appliance.gateway.protocol import PageResult, Task

FIXTURES = Path(__file__).parent / "fixtures" / "gateway"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def settings(**kw: Any) -> EngineSettings:
    return EngineSettings(base_url="http://127.0.0.1:9", served_name=kw.pop("served_name", "m"), **kw)


def page(width: int = 1240, height: int = 1754, number: int = 1) -> PageImage:
    return PageImage(number, Image.new("RGB", (width, height), "white"))


class FakeVllm:
    """An httpx transport answering /v1/chat/completions with a canned content; records requests."""

    def __init__(self, content: str = "", status: int = 200, delay: float = 0.0, finish_reason: str = "stop") -> None:
        self.content, self.status, self.delay, self.finish_reason = content, status, delay, finish_reason
        self.requests: list[dict[str, Any]] = []
        self.in_flight = self.max_in_flight = 0

    async def handler(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        if self.status != 200:
            return httpx.Response(self.status, json={"error": {"message": "boom", "code": self.status}})
        message = {"role": "assistant", "content": self.content}
        return httpx.Response(200, json={"choices": [{"message": message, "finish_reason": self.finish_reason}]})

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- dots.ocr -------------------------------------------------------------------------------------


def test_smart_resize_matches_dots_reference() -> None:
    assert smart_resize(1754, 1240) == (1764, 1232)  # multiples of 28, under the max
    h, w = smart_resize(1754, 1240, max_pixels=200704)
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 200704
    assert smart_resize(10, 10) == (56, 56)  # up to min_pixels 3136


def test_parse_clean_layout() -> None:
    cells, warnings = parse_cells(fixture("dots_layout.json"))
    assert warnings == []
    assert [c["category"] for c in cells] == ["Title", "Text", "Table", "Formula", "Picture", "Page-footer"]
    assert cells[4] == {"bbox": [112.0, 588.0, 560.0, 868.0], "category": "Picture", "text": ""}


def test_parse_truncated_keeps_complete_cells_and_salvages_the_last() -> None:
    cells, warnings = parse_cells(fixture("dots_layout_truncated.txt"))
    assert [c["text"] for c in cells] == [
        "# Quarterly Report",
        "Revenue grew by **12%**",
        "The second paragraph was cut off in the midd",
    ]
    assert cells[2]["bbox"] == [112.0, 280.0, 1064.0, 476.0]
    assert any("broken JSON" in w for w in warnings)


def test_parse_fenced_with_trailing_text() -> None:
    cells, _ = parse_cells(fixture("dots_layout_fenced.txt"))
    assert [c["category"] for c in cells] == ["Section-header", "List-item"]


def test_parse_single_object() -> None:
    cells, _ = parse_cells(fixture("dots_layout_single.json"))
    assert cells == [{"bbox": [56.0, 56.0, 168.0, 112.0], "category": "Text", "text": "single object"}]


def test_parse_messy_cells() -> None:
    cells, warnings = parse_cells(fixture("dots_layout_messy.txt"))
    texts = [(c["text"], c["bbox"], c["category"]) for c in cells]
    assert ("repeated", [10.0, 20.0, 300.0, 60.0], "Text") in texts
    assert sum(1 for t in texts if t[0] == "repeated") == 1
    assert ("bbox as a string", [10.0, 80.0, 300.0, 120.0], "Text") in texts
    assert ("no bbox", None, "Text") in texts
    assert ("three numbers, no category", None, "Text") in texts
    assert ("", [5.0, 5.0, 50.0, 50.0], "Picture") in texts
    assert warnings


@pytest.mark.parametrize("raw", ["", "not json at all", "[", "[{", "```json\n", "null", "[1, 2, 3]", '{"bbox": [1,'])
def test_parse_never_raises(raw: str) -> None:
    cells, _ = parse_cells(raw)
    assert isinstance(cells, list)


def test_dots_layout_rescales_boxes_to_the_original_page() -> None:
    fake = FakeVllm(fixture("dots_layout.json"))
    engine = DotsOcrEngine(settings(served_name="dots-ocr"), transport=fake.transport(), max_pixels=11289600)
    result = run(engine.ocr(page(1240, 1754), Task.layout))
    assert isinstance(result, PageResult) and result.engine == "dots-ocr" and result.model == "dots-ocr"
    sent = fake.requests[0]
    assert sent["model"] == "dots-ocr"
    text_part = sent["messages"][0]["content"][1]["text"]
    assert text_part == IMAGE_PLACEHOLDER + PROMPT_LAYOUT_ALL
    url = sent["messages"][0]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    # the model saw 1232x1764 (smart_resize); x scales by 1240/1232, y by 1754/1764
    title = result.blocks[0]
    assert title.category == "title"
    assert title.bbox == [
        round(112 * 1240 / 1232),
        round(84 * 1754 / 1764),
        round(1050 * 1240 / 1232),
        round(140 * 1754 / 1764),
    ]
    table = result.blocks[2]
    assert table.category == "table" and table.html is not None and table.html.startswith("<table>")
    assert table.text.splitlines()[0] == "| Region | Q1 | Q2 |"
    assert "$$E = mc^2$$" in result.markdown and "| North | 10 | 12 |" in result.markdown
    assert result.blocks[4].category == "picture" and result.blocks[4].text == ""


def test_dots_bboxes_are_clamped_and_ordered() -> None:
    fake = FakeVllm('[{"bbox": [300, 200, -20, 10000], "category": "Text", "text": "x"}]')
    engine = DotsOcrEngine(settings(), transport=fake.transport())
    result = run(engine.ocr(page(280, 280), Task.layout))
    assert result.blocks[0].bbox == [0, 200, 280, 280]


def test_dots_text_task_uses_the_ocr_prompt() -> None:
    fake = FakeVllm("First line\n\nSecond paragraph")
    engine = DotsOcrEngine(settings(), transport=fake.transport())
    result = run(engine.ocr(page(100, 100), Task.text))
    assert fake.requests[0]["messages"][0]["content"][1]["text"] == IMAGE_PLACEHOLDER + PROMPT_OCR
    assert [b.text for b in result.blocks] == ["First line", "Second paragraph"]
    assert all(b.bbox is None for b in result.blocks)


def test_dots_unreadable_answer_becomes_one_text_block_with_a_warning() -> None:
    fake = FakeVllm("I cannot do that")
    result = run(DotsOcrEngine(settings(), transport=fake.transport()).ocr(page(100, 100), Task.layout))
    assert [b.text for b in result.blocks] == ["I cannot do that"]
    assert result.warnings


def test_dots_has_no_chart_prompt() -> None:
    with pytest.raises(TaskNotSupportedError) as info:
        run(DotsOcrEngine(settings()).ocr(page(10, 10), Task.chart))
    assert info.value.status_code == 422


def test_dots_answer_cut_at_the_cap_is_marked() -> None:
    fake = FakeVllm(fixture("dots_layout_truncated.txt"), finish_reason="length")
    engine = DotsOcrEngine(settings(max_new_tokens=24000), transport=fake.transport())
    small = page(280, 392)
    result = run(engine.ocr(small, Task.layout))
    assert fake.requests[0]["max_tokens"] == 24000
    assert is_truncated(result) and result.warnings[0] == truncation_warning(24000)
    assert "output cap of 24000 tokens" in result.warnings[0] and any("broken JSON" in w for w in result.warnings)
    assert len(result.blocks) == 3  # what was read is kept
    assert is_truncated(run(engine.ocr(small, Task.text)))
    whole = DotsOcrEngine(settings(), transport=FakeVllm(fixture("dots_layout.json")).transport())
    assert run(whole.ocr(small, Task.layout)).warnings == []


# --- Qwen3-VL -------------------------------------------------------------------------------------


def test_qwenvl_html_boxes_on_the_relative_grid() -> None:
    blocks = parse_qwenvl_html(fixture("qwenvl_layout.html"), 2000, 1000)
    assert [b.category for b in blocks] == ["title", "text", "picture", "table", "text"]
    assert blocks[0].bbox == [100, 20, 1900, 60]  # 50/1000*2000 … 60/1000*1000
    assert blocks[1].text == "Revenue grew by 12% compared\nwith the previous quarter."
    assert blocks[3].html is not None and blocks[3].text.startswith("| Region | Q1 |")


def test_qwen_layout_and_text() -> None:
    fake = FakeVllm(fixture("qwenvl_layout.html"))
    engine = Qwen3VlEngine(settings(served_name="qwen"), transport=fake.transport())
    result = run(engine.ocr(page(2000, 1000), Task.layout))
    assert fake.requests[0]["messages"][0]["content"][1]["text"] == "qwenvl html"
    assert fake.requests[0]["temperature"] == 0.0
    assert result.blocks[0].bbox == [100, 20, 1900, 60]
    assert result.markdown.startswith("Quarterly Report")

    fake = FakeVllm("```markdown\n# Title\n\nBody text.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n```")
    result = run(Qwen3VlEngine(settings(), transport=fake.transport()).ocr(page(), Task.text))
    assert fake.requests[0]["messages"][0]["content"][1]["text"] == "Read all the text in the image."
    assert [b.category for b in result.blocks] == ["title", "text", "table"]
    assert result.markdown.startswith("# Title")


def test_qwen_layout_without_boxes_falls_back_to_text() -> None:
    fake = FakeVllm("Just some text\n\nand more")
    result = run(Qwen3VlEngine(settings(), transport=fake.transport()).ocr(page(), Task.layout))
    assert [b.text for b in result.blocks] == ["Just some text", "and more"] and result.warnings


def test_qwen_table_task_normalises_html() -> None:
    fake = FakeVllm("<table><tr><td>a</td><td>b</td></tr></table>")
    result = run(Qwen3VlEngine(settings(), transport=fake.transport()).ocr(page(), Task.table))
    assert result.blocks[0].html == "<table><tr><td>a</td><td>b</td></tr></table>"
    assert result.markdown == "| a | b |\n|---|---|"


@pytest.mark.parametrize("task", [Task.text, Task.layout, Task.table, Task.formula])
def test_qwen_answer_cut_at_the_cap_is_marked(task: Task) -> None:
    fake = FakeVllm("# Title\n\nA sentence that stops in the mid", finish_reason="length")
    result = run(Qwen3VlEngine(settings(), transport=fake.transport()).ocr(page(64, 64), task))
    assert is_truncated(result) and "the token limit" in result.warnings[0]  # no cap configured
    done = run(Qwen3VlEngine(settings(), transport=FakeVllm("# Title").transport()).ocr(page(64, 64), task))
    assert not is_truncated(done)


# --- common: errors, timeouts, concurrency --------------------------------------------------------


def test_connection_refused_is_unavailable() -> None:
    engine = Qwen3VlEngine(EngineSettings(base_url="http://127.0.0.1:1", served_name="m"))
    with pytest.raises(EngineUnavailable) as info:
        run(engine.ocr(page(10, 10), Task.text))
    assert info.value.status_code == 503 and info.value.retry_after > 0


@pytest.mark.parametrize("status,error,code", [(500, EngineUnavailable, 503), (400, EngineError, 502)])
def test_upstream_status(status: int, error: type[Exception], code: int) -> None:
    fake = FakeVllm(status=status)
    with pytest.raises(error) as info:
        run(Qwen3VlEngine(settings(), transport=fake.transport()).ocr(page(10, 10), Task.text))
    assert info.value.status_code == code and "boom" in str(info.value)


def test_timeout() -> None:
    fake = FakeVllm("late", delay=2.0)
    engine = Qwen3VlEngine(settings(timeout_s=0.2), transport=fake.transport())
    with pytest.raises(EngineTimeout) as info:
        run(engine.ocr(page(10, 10), Task.text))
    assert info.value.status_code == 504


def test_concurrency_is_bounded_and_queue_timeout_is_503() -> None:
    fake = FakeVllm("ok", delay=0.2)
    engine = Qwen3VlEngine(settings(max_concurrency=2), transport=fake.transport())

    async def many() -> list[PageResult]:
        return await asyncio.gather(*(engine.ocr(page(10, 10, n), Task.text) for n in range(1, 7)))

    results = run(many())
    assert [r.page for r in results] == [1, 2, 3, 4, 5, 6]
    assert fake.max_in_flight == 2
    assert max(r.timings["queue"] for r in results) > 0.1

    fake = FakeVllm("ok", delay=0.5)
    engine = Qwen3VlEngine(settings(max_concurrency=1, queue_timeout_s=0.1), transport=fake.transport())

    async def two() -> list[Any]:
        return await asyncio.gather(*(engine.ocr(page(10, 10), Task.text) for _ in range(2)), return_exceptions=True)

    outcomes = run(two())
    assert sum(isinstance(o, PageResult) for o in outcomes) == 1
    assert sum(isinstance(o, EngineUnavailable) for o in outcomes) == 1


def test_build_engine() -> None:
    assert isinstance(build_engine("dots-ocr", settings()), DotsOcrEngine)
    with pytest.raises(ValueError, match="unknown engine"):
        build_engine("got-ocr", settings())
    with pytest.raises(ValueError, match="http://"):
        EngineSettings(base_url="127.0.0.1:80", served_name="m")
    assert EngineSettings(base_url="http://h:1/v1/", served_name="m").root == "http://h:1"


# --- PaddleOCR-VL (pipeline faked here; the real one runs in test_gateway_vllm.py) -----------------


class FakeResult:
    def __init__(self, recorded: dict[str, Any]) -> None:
        self.json = {"res": recorded["res"]}
        self._markdown = recorded["markdown"]

    def _to_markdown(self, pretty: bool = True) -> dict[str, Any]:
        return {"markdown_texts": self._markdown, "markdown_images": {}}


class FakePipeline:
    def __init__(self, recorded: dict[str, Any], **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.recorded = recorded
        self.calls: list[dict[str, Any]] = []
        self.layout_det_model = lambda *args, **kwargs: iter(())  # the engine wraps it in a lock

    def predict(self, image: Any, **kwargs: Any) -> list[FakeResult]:
        self.calls.append({"shape": image.shape, **kwargs})
        return [FakeResult(self.recorded)]

    def close(self) -> None:
        pass


def _paddle(recorded: str, layout_dir: Path | None = None, **kw: Any) -> tuple[PaddleOcrVlEngine, list[FakePipeline]]:
    built: list[FakePipeline] = []

    def factory(**kwargs: Any) -> FakePipeline:
        built.append(FakePipeline(json.loads(fixture(recorded)), **kwargs))
        return built[-1]

    engine = PaddleOcrVlEngine(
        EngineSettings(base_url="http://127.0.0.1:8101", served_name="PaddleOCR-VL-0.9B", **kw),
        layout_model_dir=layout_dir,
        pipeline_factory=factory,
    )
    return engine, built


def test_paddle_pipeline_is_built_with_the_server_args_and_no_layout() -> None:
    engine, built = _paddle("paddle_result_no_layout_recorded.json")
    result = run(engine.ocr(page(200, 100), Task.table))
    run(engine.ocr(page(200, 100), Task.formula))
    assert len(built) == 1  # built once, lazily
    assert built[0].kwargs == {
        "pipeline_version": "v1",
        "vl_rec_backend": "vllm-server",
        "vl_rec_server_url": "http://127.0.0.1:8101/v1",
        "vl_rec_api_model_name": "PaddleOCR-VL-0.9B",
        "vl_rec_max_concurrency": 4,
        "use_doc_orientation_classify": False,
        "use_doc_unwarping": False,
        "use_layout_detection": False,
    }
    assert built[0].calls[0]["shape"] == (100, 200, 3)
    assert built[0].calls[0]["prompt_label"] == "table" and built[0].calls[1]["prompt_label"] == "formula"
    assert built[0].calls[0]["use_layout_detection"] is False and built[0].calls[0]["use_queues"] is False
    assert result.blocks[0].bbox == [0, 0, 200, 100] and result.blocks[0].category == "table"


def test_paddle_layout_needs_a_layout_model(tmp_path: Path) -> None:
    engine, _ = _paddle("paddle_result_no_layout_recorded.json")
    result = run(engine.ocr(page(200, 100), Task.layout))
    assert result.warnings and "no layout model" in result.warnings[0]

    with pytest.raises(ValueError, match=r"no inference\.yml"):
        _paddle("paddle_result_layout.json", layout_dir=tmp_path)
    (tmp_path / "inference.yml").write_text("Global:\n  model_name: PP-DocLayoutV2\n")
    engine, built = _paddle("paddle_result_layout.json", layout_dir=tmp_path)
    result = run(engine.ocr(page(1240, 1754), Task.layout))
    assert built[0].kwargs["use_layout_detection"] is True
    assert built[0].kwargs["layout_detection_model_dir"] == str(tmp_path)
    assert built[0].calls[0]["use_layout_detection"] is True and "prompt_label" not in built[0].calls[0]
    run(engine.ocr(page(1240, 1754), Task.table))  # a single-task request skips layout
    assert built[0].calls[1]["use_layout_detection"] is False and built[0].calls[1]["prompt_label"] == "table"
    assert result.markdown.startswith("# Quarterly Report")


def test_paddle_layout_guard_wraps_the_layout_model_or_refuses(tmp_path: Path) -> None:
    """The layout model's calls are serialised (DESIGN §14); a PaddleX without one to wrap is an error."""
    from appliance.gateway.engines.paddleocr_vl import _SerializedPredictor, guard_layout_model

    (tmp_path / "inference.yml").write_text("Global:\n  model_name: PP-DocLayoutV2\n")
    engine, built = _paddle("paddle_result_layout.json", layout_dir=tmp_path)
    run(engine.ocr(page(1240, 1754), Task.layout))
    assert isinstance(built[0].layout_det_model, _SerializedPredictor)
    assert guard_layout_model(built[0]) == 1 and not isinstance(
        built[0].layout_det_model._predictor, _SerializedPredictor
    )

    class Moved(FakePipeline):
        def __init__(self, recorded: dict[str, Any], **kwargs: Any) -> None:
            super().__init__(recorded, **kwargs)
            del self.layout_det_model

    moved = PaddleOcrVlEngine(settings(), layout_model_dir=tmp_path, pipeline_factory=lambda **kw: Moved({}, **kw))
    with pytest.raises(EngineError, match="cannot serialise"):
        run(moved.ocr(page(100, 100), Task.layout))


def test_paddle_result_mapping() -> None:
    markdown, blocks = convert_result(json.loads(fixture("paddle_result_layout.json")))
    assert [b.category for b in blocks] == ["title", "text", "table", "table", "display_formula", "image", "footer"]
    assert blocks[0].bbox == [112, 84, 1050, 140]
    assert blocks[2].html is not None and blocks[2].text.startswith("| Region | Q1 | Q2 |")
    # a table PaddleX could not convert is still OTSL: converted here
    assert blocks[3].html == '<table><tr><td colspan="2">A</td></tr><tr><td>b</td><td>c</td></tr></table>'
    assert markdown.startswith("# Quarterly Report")


def test_paddle_errors_are_typed() -> None:
    import openai

    request = httpx.Request("POST", "http://127.0.0.1:8101/v1/chat/completions")
    refused = openai.APIConnectionError(request=request)
    assert isinstance(_translate("paddleocr-vl", "http://x", refused), EngineUnavailable)
    assert isinstance(_translate("paddleocr-vl", "http://x", openai.APITimeoutError(request)), EngineTimeout)
    wrapped = RuntimeError("Exception from the 'vlm' worker: Connection error.")
    assert isinstance(_translate("paddleocr-vl", "http://x", wrapped), EngineUnavailable)
    bad = openai.BadRequestError(
        "Error code: 400 - Per-request mm_processor_kwargs are disabled by default",
        response=httpx.Response(400, request=request),
        body=None,
    )
    err = _translate("paddleocr-vl", "http://x", bad)
    assert type(err) is EngineError and "--trust-request-mm-kwargs" in str(err)
    server = openai.InternalServerError("boom", response=httpx.Response(500, request=request), body=None)
    assert isinstance(_translate("paddleocr-vl", "http://x", server), EngineUnavailable)


def test_paddle_pipeline_failure_surfaces_typed() -> None:
    class Broken(FakePipeline):
        def predict(self, image: Any, **kwargs: Any) -> list[FakeResult]:
            raise RuntimeError("Exception from the 'vlm' worker: Connection error.")

    engine = PaddleOcrVlEngine(
        EngineSettings(base_url="http://127.0.0.1:8101", served_name="PaddleOCR-VL-0.9B"),
        pipeline_factory=lambda **kw: Broken({}, **kw),
    )
    with pytest.raises(EngineUnavailable):
        run(engine.ocr(page(10, 10), Task.text))
