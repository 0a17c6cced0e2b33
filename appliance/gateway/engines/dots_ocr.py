"""dots.ocr adapter: one prompt reads the whole page layout as JSON cells `{bbox, category, text}`.

Prompts are dots.ocr's own (`dots_ocr/utils/prompts.py`, `dict_promptmode_to_prompt`, repository
rednote-hilab/dots.ocr at commit 36d7248): `prompt_layout_all_en` for layout/table/formula and
`prompt_ocr` for plain text. As dots.ocr's vLLM client does, the image placeholder is written into
the text (`<|img|><|imgpad|><|endofimg|>` + prompt; the server runs with
`--chat-template-content-format string`), sampling temperature 0.1, top_p 0.9.

Boxes come back in the pixels of the image the model saw, which its processor resized
(`smart_resize`: both sides multiples of 28, area within min/max pixels). The adapter does that
resize itself before sending — so it knows the frame — and scales every box back to the original
page. `max_pixels` must not exceed the server's (`--mm-processor-kwargs '{"max_pixels": …}'`), or the
server would shrink the image again behind our back.

The JSON is often broken (cut at max tokens, repeated cells, a code fence, a single object, trailing
text): `parse_cells` keeps every cell it can read and reports what it dropped; it never raises.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import httpx
from PIL import Image

from appliance.gateway.documents import PageImage
from appliance.gateway.engines._text import blocks_to_markdown, markdown_to_blocks, strip_fences, table_block
from appliance.gateway.engines.base import ChatClient, Engine, EngineSettings, truncation_warning
from appliance.gateway.protocol import Block, PageResult, Task

PROMPT_LAYOUT_ALL = """Please output the layout information from the PDF image, including each layout element's bbox, its category, and the corresponding text content within the bbox.

1. Bbox format: [x1, y1, x2, y2]

2. Layout Categories: The possible categories are ['Caption', 'Footnote', 'Formula', 'List-item', 'Page-footer', 'Page-header', 'Picture', 'Section-header', 'Table', 'Text', 'Title'].

3. Text Extraction & Formatting Rules:
    - Picture: For the 'Picture' category, the text field should be omitted.
    - Formula: Format its text as LaTeX.
    - Table: Format its text as HTML.
    - All Others (Text, Title, etc.): Format their text as Markdown.

4. Constraints:
    - The output text must be the original text from the image, with no translation.
    - All layout elements must be sorted according to human reading order.

5. Final Output: The entire output must be a single JSON object.
"""  # noqa: E501 - verbatim
PROMPT_OCR = "Extract the text content from this image."
IMAGE_PLACEHOLDER = "<|img|><|imgpad|><|endofimg|>"
CATEGORIES = (
    "Caption",
    "Footnote",
    "Formula",
    "List-item",
    "Page-footer",
    "Page-header",
    "Picture",
    "Section-header",
    "Table",
    "Text",
    "Title",
)

# dots_ocr/utils/consts.py
IMAGE_FACTOR = 28
MIN_PIXELS = 3136
MAX_PIXELS = 11289600


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:  # fmt: skip
    """(height, width) the Qwen2-VL-style processor gives the model: multiples of `factor`, area in range."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.0f} is above 200")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
        if h_bar * w_bar > max_pixels:
            beta = math.sqrt((h_bar * w_bar) / max_pixels)
            h_bar = max(factor, math.floor(h_bar / beta / factor) * factor)
            w_bar = max(factor, math.floor(w_bar / beta / factor) * factor)
    return h_bar, w_bar


class DotsOcrEngine(Engine):
    kind = "dots-ocr"
    tasks = frozenset({Task.text, Task.layout, Task.table, Task.formula})

    def __init__(
        self,
        settings: EngineSettings,
        *,
        min_pixels: int = MIN_PIXELS,
        max_pixels: int = 5_017_600,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(settings)
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self._chat = ChatClient(self.kind, settings, transport=transport)

    async def _read(self, page: PageImage, task: Task) -> PageResult:
        sent = self._resize(page)
        prompt = PROMPT_OCR if task == Task.text else PROMPT_LAYOUT_ALL
        answer = await self._chat.complete(
            sent,
            IMAGE_PLACEHOLDER + prompt,
            max_tokens=self.settings.max_new_tokens,
            temperature=0.1,
            top_p=0.9,
        )
        raw = answer.text
        cut = [truncation_warning(self.settings.max_new_tokens)] if answer.truncated else []
        if task == Task.text:
            text = strip_fences(raw).strip()
            return self._result(page, task, text, markdown_to_blocks(text), cut)
        cells, warnings = parse_cells(raw)
        warnings = cut + warnings
        blocks = [
            _to_block(cell, sx=page.width / sent.width, sy=page.height / sent.height, w=page.width, h=page.height)
            for cell in cells
        ]
        if not cells and raw.strip():
            warnings.append("no layout cell could be read: the raw answer is returned as one text block")
            blocks = [Block(category="text", text=strip_fences(raw).strip())]
        return self._result(page, task, blocks_to_markdown(blocks), blocks, warnings)

    def _resize(self, page: PageImage) -> PageImage:
        height, width = smart_resize(page.height, page.width, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        if (width, height) == (page.width, page.height):
            return page
        return PageImage(page.number, page.image.resize((width, height), Image.Resampling.BICUBIC))

    async def aclose(self) -> None:
        await self._chat.aclose()


def _to_block(cell: dict[str, Any], *, sx: float, sy: float, w: int, h: int) -> Block:
    category = str(cell.get("category") or "Text").strip().lower()
    text = cell.get("text")
    text = "" if text is None else str(text)
    bbox = cell.get("bbox")
    if bbox is not None:
        x0, y0, x1, y1 = bbox
        bbox = [_clamp(x0 * sx, w), _clamp(y0 * sy, h), _clamp(x1 * sx, w), _clamp(y1 * sy, h)]
        if bbox[2] < bbox[0]:
            bbox[0], bbox[2] = bbox[2], bbox[0]
        if bbox[3] < bbox[1]:
            bbox[1], bbox[3] = bbox[3], bbox[1]
    if category == "table":
        return table_block(text, bbox)
    return Block(bbox=bbox, category=category, text=text)


def _clamp(v: float, limit: int) -> int:
    return max(0, min(limit, round(v)))


# --- tolerant JSON --------------------------------------------------------------------------------

_DECODER = json.JSONDecoder()
_BBOX_RE = re.compile(r'"bbox"\s*:\s*\[\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\]')
_CATEGORY_RE = re.compile(r'"category"\s*:\s*"([^"\\]*)"')
_TEXT_RE = re.compile(r'"text"\s*:\s*"((?:[^"\\]|\\.)*)("?)', re.S)


def parse_cells(raw: str) -> tuple[list[dict[str, Any]], list[str]]:
    """dots.ocr's answer → cells `{"bbox": [4 numbers] | None, "category": str, "text": str}` + warnings.

    Accepts a JSON list, a code-fenced one, a single object, an object wrapping the list, trailing
    text, a list cut off mid-object (the readable fields of the last object are kept), repeated
    cells (dropped). Cells without a usable bbox keep bbox None; unknown fields are ignored.
    """
    text = strip_fences(raw).strip()
    warnings: list[str] = []
    try:
        data = json.loads(text)
        items = _as_items(data)
    except ValueError:
        items, salvaged = _scan_objects(text)
        if items or salvaged:
            warnings.append(
                f"broken JSON: {len(items)} complete cell(s) read" + (", 1 cut-off cell salvaged" if salvaged else "")
            )
        items += salvaged
    cells: list[dict[str, Any]] = []
    seen: set[str] = set()
    dropped = 0
    for item in items:
        cell = _normalise(item)
        if cell is None:
            dropped += 1
            continue
        key = json.dumps(cell, sort_keys=True)
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        cells.append(cell)
    if dropped:
        warnings.append(f"{dropped} repeated or unreadable cell(s) dropped")
    return cells, warnings


def _as_items(data: Any) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for value in data.values():  # {"layout": [...]} and similar wrappers
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                return value
        return [data]
    return []


def _scan_objects(text: str) -> tuple[list[Any], list[dict[str, Any]]]:
    """Every complete top-level `{…}` in order; the readable fields of a cut-off last one."""
    items: list[Any] = []
    i = 0
    last_failed: int | None = None
    while True:
        start = text.find("{", i)
        if start < 0:
            break
        try:
            obj, end = _DECODER.raw_decode(text, start)
        except ValueError:
            last_failed = start
            i = _skip_object(text, start)
            continue
        items.append(obj)
        i = end
    salvaged: list[dict[str, Any]] = []
    if last_failed is not None:
        fragment = text[last_failed:]
        cell = _salvage(fragment)
        if cell is not None:
            salvaged.append(cell)
    return items, salvaged


def _skip_object(text: str, start: int) -> int:
    """Index after the object starting at `start`, or the end: skip over strings and nested braces."""
    depth, i, in_str = 0, start, False
    while i < len(text):
        ch = text[i]
        if in_str:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return len(text)


def _salvage(fragment: str) -> dict[str, Any] | None:
    bbox = _BBOX_RE.search(fragment)
    category = _CATEGORY_RE.search(fragment)
    if not bbox and not category:
        return None
    cell: dict[str, Any] = {}
    if bbox:
        cell["bbox"] = [float(v) for v in bbox.groups()]
    if category:
        cell["category"] = category.group(1)
    text = _TEXT_RE.search(fragment)
    if text:
        body = text.group(1)
        try:
            cell["text"] = json.loads(f'"{body}"')
        except ValueError:
            cell["text"] = body.rstrip("\\")
    return cell


def _normalise(item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        return None
    bbox = _bbox(item.get("bbox"))
    category = item.get("category")
    category = str(category) if isinstance(category, str | int | float) and str(category).strip() else "Text"
    text = item.get("text")
    text = text if isinstance(text, str) else ("" if text is None else json.dumps(text, ensure_ascii=False))
    if bbox is None and not text:
        return None
    return {"bbox": bbox, "category": category, "text": text}


def _bbox(value: Any) -> list[float] | None:
    if isinstance(value, str):
        value = re.findall(r"-?\d+(?:\.\d+)?", value)
    if not isinstance(value, list | tuple) or len(value) != 4:
        return None
    try:
        box = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in box):
        return None
    return box
