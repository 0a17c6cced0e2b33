"""Pydantic models of the OCR API: what one engine call returns for one page.

Every engine adapter (`appliance.gateway.engines`) returns a `PageResult` in this shape whatever the
model's own output format (OTSL tables, dots.ocr JSON cells, Qwen's relative grid), so the API layer
and the PaddleX-compatible converter never see engine quirks.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Task(StrEnum):
    """What to read from a page."""

    text = "text"  # plain reading: Markdown of the whole page, blocks without boxes where the model has none
    layout = "layout"  # layout blocks with boxes, categories and text, in reading order
    table = "table"  # the page (or crop) is a table: HTML + Markdown
    formula = "formula"  # the page (or crop) is a formula: LaTeX
    chart = "chart"  # the page (or crop) is a chart: its data as a table


BBox = Annotated[list[int], Field(min_length=4, max_length=4, description="[x0, y0, x1, y1] in original pixels")]


class Block(BaseModel):
    """One region of a page in reading order."""

    model_config = ConfigDict(extra="forbid")

    bbox: BBox | None = None
    category: str = Field(description="engine's label, lower-case: text, title, table, formula, picture, …")
    text: str = ""
    html: str | None = Field(default=None, description="tables: the HTML form (text then holds Markdown)")


class PageResult(BaseModel):
    """One page read by one engine."""

    model_config = ConfigDict(extra="forbid")

    page: int = Field(ge=1, description="1-based page number in the uploaded document")
    width: int = Field(gt=0, description="original page width in pixels (the frame of every bbox)")
    height: int = Field(gt=0)
    markdown: str
    blocks: list[Block] = Field(default_factory=list)
    engine: str = Field(description="engine kind: paddleocr-vl, dots-ocr, qwen3-vl")
    model: str = Field(description="served model name the engine's vLLM server answered for")
    task: Task
    timings: dict[str, float] = Field(default_factory=dict, description="seconds, e.g. engine, queue")
    warnings: list[str] = Field(default_factory=list, description="output repaired or partly lost (broken JSON, …)")


class DocumentResult(BaseModel):
    """A whole upload read by one engine: what `/v1/ocr` answers."""

    model_config = ConfigDict(extra="forbid")

    engine: str
    model: str
    task: Task
    kind: str = Field(description="detected file type: pdf, png, jpeg, tiff, webp")
    total_pages: int = Field(description="pages in the upload (before any page range)")
    markdown: str = Field(description="every page's Markdown, pages separated by a blank line and ---")
    pages: list[PageResult]
    timings: dict[str, float] = Field(default_factory=dict, description="seconds: decode, ocr, total")
