"""OTSL tables (PaddleOCR-VL's `Table Recognition:` output) → HTML and Markdown. Pure functions.

OTSL writes a table as a grid of tokens, row by row: `<fcel>` a cell with the text that follows it,
`<ecel>` an empty cell, `<lcel>` "same cell as my left neighbour" (column span), `<ucel>` "same cell
as the one above" (row span), `<xcel>` both (the inside of a 2-D span), `<nl>` end of row.

The HTML matches PaddleX's own converter (`<table><tr><td rowspan=.. colspan=..>`, escaped text)
so a page reads the same whichever path produced it. Markdown has no spans: the text sits in the
span's top-left cell, the cells it covers are left empty, and the first row is the header row.
Ragged rows are padded with empty cells; a model that wrote no OTSL token gives no table (None).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from html.parser import HTMLParser

TOKENS = ("<fcel>", "<ecel>", "<lcel>", "<ucel>", "<xcel>", "<nl>")
_TOKEN_RE = re.compile("(" + "|".join(re.escape(t) for t in TOKENS) + ")")
_SPAN_TOKENS = {"<lcel>", "<ucel>", "<xcel>"}


@dataclass(frozen=True)
class Cell:
    """A table cell in grid coordinates (0-based), with its spans."""

    row: int
    col: int
    text: str
    rowspan: int = 1
    colspan: int = 1


@dataclass(frozen=True)
class Table:
    rows: int
    cols: int
    cells: list[Cell]  # origin cells only, row-major


def is_otsl(text: str) -> bool:
    return any(token in text for token in TOKENS)


def parse_otsl(text: str) -> Table | None:
    """Grid of tokens → cells with spans. None when the text holds no OTSL token."""
    if not is_otsl(text):
        return None
    grid: list[list[tuple[str, str]]] = [[]]
    pending: tuple[str, str] | None = None
    for piece in _TOKEN_RE.split(text):
        if piece in TOKENS:
            if pending is not None:
                grid[-1].append(pending)
                pending = None
            if piece == "<nl>":
                grid.append([])
            else:
                pending = (piece, "")
        elif pending is not None:
            pending = (pending[0], pending[1] + piece)
        # text before the first token (or after <nl>) has no cell: dropped
    if pending is not None:
        grid[-1].append(pending)
    grid = [row for row in grid if row]
    if not grid:
        return None
    cols = max(len(row) for row in grid)
    grid = [row + [("<ecel>", "")] * (cols - len(row)) for row in grid]

    cells: list[Cell] = []
    for r, row in enumerate(grid):
        for c, (token, content) in enumerate(row):
            if token in _SPAN_TOKENS and _has_origin(grid, r, c):
                continue  # covered by a span that starts above or to the left
            colspan = 1
            while c + colspan < cols and grid[r][c + colspan][0] in ("<lcel>", "<xcel>"):
                colspan += 1
            rowspan = 1
            while r + rowspan < len(grid) and grid[r + rowspan][c][0] in ("<ucel>", "<xcel>"):
                rowspan += 1
            cells.append(Cell(r, c, content.strip(), rowspan, colspan))
    return Table(rows=len(grid), cols=cols, cells=cells)


def _has_origin(grid: list[list[tuple[str, str]]], r: int, c: int) -> bool:
    """A span token is covered when a real cell lies left (lcel/xcel) or above (ucel/xcel) of it."""
    token = grid[r][c][0]
    if token in ("<lcel>", "<xcel>") and c > 0:
        return True
    return token in ("<ucel>", "<xcel>") and r > 0


def table_to_html(table: Table) -> str:
    by_row: dict[int, list[Cell]] = {}
    for cell in table.cells:
        by_row.setdefault(cell.row, []).append(cell)
    body = []
    for r in range(table.rows):
        tds = []
        for cell in by_row.get(r, []):
            attrs = (f' rowspan="{cell.rowspan}"' if cell.rowspan > 1 else "") + (
                f' colspan="{cell.colspan}"' if cell.colspan > 1 else ""
            )
            tds.append(f"<td{attrs}>{html.escape(cell.text)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return "<table>" + "".join(body) + "</table>"


def table_to_markdown(table: Table) -> str:
    grid = [["" for _ in range(table.cols)] for _ in range(table.rows)]
    for cell in table.cells:
        grid[cell.row][cell.col] = cell.text
    return _grid_to_markdown(grid)


def otsl_to_html(text: str) -> str | None:
    table = parse_otsl(text)
    return table_to_html(table) if table else None


def otsl_to_markdown(text: str) -> str | None:
    table = parse_otsl(text)
    return table_to_markdown(table) if table else None


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>").strip()


def _grid_to_markdown(grid: list[list[str]]) -> str:
    if not grid:
        return ""
    cols = max(len(row) for row in grid)
    rows = [[_md_cell(c) for c in row] + [""] * (cols - len(row)) for row in grid]
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join(["---"] * cols) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


# --- HTML tables (PaddleX pipeline output, dots.ocr's Table text) → Markdown ------------------------


class _TableHTML(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[list[tuple[str, int, int]]] = []
        self._cell: list[str] | None = None
        self._span = (1, 1)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            if not self.rows:
                self.rows.append([])
            a = dict(attrs)
            self._span = (_int_attr(a.get("rowspan")), _int_attr(a.get("colspan")))
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(("".join(self._cell).strip(), *self._span))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _int_attr(value: str | None) -> int:
    try:
        return max(1, min(int(value or 1), 1000))
    except ValueError:
        return 1


def html_table_to_markdown(text: str) -> str | None:
    """First `<table>` of an HTML fragment → Markdown (spans resolved as in `table_to_markdown`)."""
    if "<table" not in text.lower():
        return None
    parser = _TableHTML()
    try:
        parser.feed(text)
        parser.close()
    except Exception:  # HTMLParser is lenient; anything it still rejects is not a table we can use
        return None
    if not any(parser.rows):
        return None
    occupied: dict[tuple[int, int], str] = {}
    for r, row in enumerate(parser.rows):
        c = 0
        for content, rowspan, colspan in row:
            while (r, c) in occupied:
                c += 1
            for dr in range(rowspan):
                for dc in range(colspan):
                    occupied[(r + dr, c + dc)] = content if dr == dc == 0 else ""
            c += colspan
    n_rows = max(r for r, _ in occupied) + 1
    n_cols = max(c for _, c in occupied) + 1
    grid = [[occupied.get((r, c), "") for c in range(n_cols)] for r in range(n_rows)]
    return _grid_to_markdown(grid)
