"""Qwen3-VL adapter: a general VLM asked to read; Markdown out, boxes only for the layout task.

- `text`: "Read all the text in the image." → Markdown; blocks are its paragraphs (no boxes).
- `layout`: "qwenvl html" (Qwen's document-parsing format: HTML whose elements carry
  `data-bbox="x1 y1 x2 y2"`). Qwen3-VL writes coordinates on a relative 0-1000 grid, whatever the
  image size; they are scaled to the original page's pixels here.
- `table` / `formula` / `chart`: one instruction each; the answer is normalised (HTML or Markdown
  table → both forms).

Sampling is greedy (`temperature` 0): the server should run `--generation-config vllm`, otherwise the
repo's chat sampling defaults apply to every request that does not set them.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx

from appliance.gateway.documents import PageImage
from appliance.gateway.engines._text import blocks_to_markdown, markdown_to_blocks, strip_fences, table_block
from appliance.gateway.engines.base import ChatClient, Engine, EngineSettings, truncation_warning
from appliance.gateway.protocol import Block, PageResult, Task

GRID = 1000  # Qwen3-VL's relative coordinate range

PROMPTS: dict[Task, str] = {
    Task.text: "Read all the text in the image.",
    Task.layout: "qwenvl html",
    Task.table: "Convert the table in the image to HTML.",
    Task.formula: "Convert the formula in the image to LaTeX.",
    Task.chart: "Convert the chart in the image to a data table in Markdown.",
}


class Qwen3VlEngine(Engine):
    kind = "qwen3-vl"

    def __init__(self, settings: EngineSettings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(settings)
        self._chat = ChatClient(self.kind, settings, transport=transport)

    async def _read(self, page: PageImage, task: Task) -> PageResult:
        answer = await self._chat.complete(page, PROMPTS[task], max_tokens=self.settings.max_new_tokens)
        text = strip_fences(answer.text).strip()
        warnings = [truncation_warning(self.settings.max_new_tokens)] if answer.truncated else []
        if task == Task.layout:
            blocks = parse_qwenvl_html(text, page.width, page.height)
            if not blocks and text:
                warnings.append("no element with data-bbox in the answer: read as Markdown without boxes")
                blocks = markdown_to_blocks(_strip_tags(text))
            return self._result(page, task, blocks_to_markdown(blocks), blocks, warnings)
        if task in (Task.table, Task.chart):
            block = table_block(text, category=task.value)
            return self._result(page, task, block.text, [block], warnings)
        if task == Task.formula:
            block = Block(category="formula", text=text)
            return self._result(page, task, blocks_to_markdown([block]), [block], warnings)
        return self._result(page, task, text, markdown_to_blocks(text), warnings)

    async def aclose(self) -> None:
        await self._chat.aclose()


# --- QwenVL HTML ----------------------------------------------------------------------------------

_CATEGORY_BY_TAG = {
    "h1": "title",
    "h2": "section-header",
    "h3": "section-header",
    "h4": "section-header",
    "h5": "section-header",
    "h6": "section-header",
    "p": "text",
    "li": "list-item",
    "ul": "list",
    "ol": "list",
    "table": "table",
    "img": "picture",
    "figure": "picture",
    "figcaption": "caption",
    "header": "page-header",
    "footer": "page-footer",
    "formula": "formula",
    "math": "formula",
    "div": "text",
    "span": "text",
    "address": "text",
    "caption": "caption",
}
_VOID = {"img", "br", "hr", "meta", "link", "input"}


class _BoxedElements(HTMLParser):
    """Collect outermost elements carrying data-bbox, with their text (and raw HTML for tables)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str | None, str, str]] = []  # tag, class, bbox, text / table html
        self._stack: list[str] = []
        self._open: tuple[str, str | None, str, int] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if self._open is None and a.get("data-bbox"):
            self._open = (tag, a.get("class"), a["data-bbox"] or "", len(self._stack))
            self._text = []
            if tag in _VOID:
                self._close()
                return
        if self._open is not None and self._open[0] == "table":
            self._text.append(self.get_starttag_text() or "")
        elif tag == "br" and self._open is not None:
            self._text.append("\n")
        if tag not in _VOID:
            self._stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._open is not None and self._open[0] == "table":
            self._text.append(f"</{tag}>")
        if tag in self._stack:
            while self._stack:
                if self._stack.pop() == tag:
                    break
        if self._open is not None and len(self._stack) <= self._open[3]:
            self._close()

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def _close(self) -> None:
        assert self._open is not None
        tag, cls, bbox, _ = self._open
        self.found.append((tag, cls, bbox, "".join(self._text).strip()))
        self._open = None

    def close(self) -> None:
        super().close()
        if self._open is not None:  # cut-off answer: keep what the last element had
            self._close()


def parse_qwenvl_html(text: str, width: int, height: int) -> list[Block]:
    """QwenVL HTML → blocks in document order, boxes scaled from the 0-1000 grid to page pixels."""
    parser = _BoxedElements()
    try:
        parser.feed(text)
        parser.close()
    except Exception:  # HTMLParser is lenient; keep whatever was collected
        pass
    blocks = []
    for tag, cls, bbox_attr, content in parser.found:
        numbers = re.findall(r"-?\d+(?:\.\d+)?", bbox_attr)
        bbox = None
        if len(numbers) == 4:
            x0, y0, x1, y1 = (float(n) for n in numbers)
            bbox = [_scale(x0, width), _scale(y0, height), _scale(x1, width), _scale(y1, height)]
            bbox = [min(bbox[0], bbox[2]), min(bbox[1], bbox[3]), max(bbox[0], bbox[2]), max(bbox[1], bbox[3])]
        category = (cls or "").strip().lower() or _CATEGORY_BY_TAG.get(tag, "text")
        if category in ("image", "figure"):
            category = "picture"
        if tag == "table":
            blocks.append(table_block(content, bbox, category="table"))
        else:
            blocks.append(Block(bbox=bbox, category=category, text=content))
    return blocks


def _scale(v: float, size: int) -> int:
    return max(0, min(size, round(v * size / GRID)))


def _strip_tags(text: str) -> str:
    return re.sub(r"<[^>]+>", "\n", text)
