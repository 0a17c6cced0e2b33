"""Text helpers shared by the adapters: code fences, Markdown ↔ blocks, table normalisation."""

from __future__ import annotations

import re

from appliance.gateway.otsl import html_table_to_markdown, is_otsl, parse_otsl, table_to_html, table_to_markdown
from appliance.gateway.protocol import Block

_FENCE_RE = re.compile(r"^\s*```[\w+-]*[ \t]*\n?(.*?)(?:\n?```\s*)?$", re.S)
_MD_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


def strip_fences(text: str) -> str:
    """```json … ``` / ```markdown … ``` (closing fence optional: output may be cut) → the inside."""
    m = _FENCE_RE.match(text)
    return m.group(1) if m and text.lstrip().startswith("```") else text


def table_block(text: str, bbox: list[int] | None = None, category: str = "table") -> Block:
    """A table in any form the models write (OTSL, HTML, Markdown) → Block(text=Markdown, html=HTML)."""
    text = text.strip()
    if is_otsl(text):
        table = parse_otsl(text)
        if table is not None:
            return Block(bbox=bbox, category=category, text=table_to_markdown(table), html=table_to_html(table))
    if "<table" in text.lower():
        md = html_table_to_markdown(text)
        return Block(bbox=bbox, category=category, text=md if md is not None else text, html=text)
    return Block(bbox=bbox, category=category, text=text)


def markdown_to_blocks(markdown: str) -> list[Block]:
    """Split Markdown into paragraph-level blocks (no boxes): headings, tables, formulas, text."""
    blocks: list[Block] = []
    for chunk in _chunks(markdown):
        first = chunk.lstrip()
        if first.startswith("#"):
            blocks.append(Block(category="title", text=chunk))
        elif first.startswith("$$") or first.startswith("\\["):
            blocks.append(Block(category="formula", text=chunk))
        elif first.lower().startswith("<table") or _is_md_table(chunk):
            if first.lower().startswith("<table"):
                blocks.append(table_block(chunk))
            else:
                blocks.append(Block(category="table", text=chunk))
        else:
            blocks.append(Block(category="text", text=chunk))
    return blocks


def blocks_to_markdown(blocks: list[Block], skip: frozenset[str] = frozenset({"picture", "image"})) -> str:
    parts = []
    for block in blocks:
        if block.category in skip or not block.text.strip():
            continue
        text = block.text.strip()
        if block.category == "formula" and not text.startswith(("$$", "\\[", "$")):
            text = f"$$\n{text}\n$$"
        parts.append(text)
    return "\n\n".join(parts)


def _is_md_table(chunk: str) -> bool:
    lines = chunk.strip().splitlines()
    return len(lines) >= 2 and lines[0].lstrip().startswith("|") and bool(_MD_TABLE_SEP.match(lines[1]))


def _chunks(markdown: str) -> list[str]:
    """Blank-line separated chunks, keeping $$ … $$ and <table> … </table> whole."""
    chunks: list[str] = []
    current: list[str] = []
    closing: str | None = None
    for line in markdown.replace("\r\n", "\n").split("\n"):
        stripped = line.strip()
        if closing is None and not current and stripped.startswith("$$") and stripped.count("$$") == 1:
            closing = "$$"
        elif (
            closing is None
            and not current
            and stripped.lower().startswith("<table")
            and "</table>" not in stripped.lower()
        ):
            closing = "</table>"
        elif closing is not None and closing in stripped.lower():
            current.append(line)
            chunks.append("\n".join(current).strip())
            current, closing = [], None
            continue
        if closing is None and not stripped:
            if current:
                chunks.append("\n".join(current).strip())
                current = []
            continue
        current.append(line)
    if current:
        chunks.append("\n".join(current).strip())
    return [c for c in chunks if c]
