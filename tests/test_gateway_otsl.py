"""OTSL → HTML / Markdown, and HTML tables → Markdown (pure functions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.gateway.otsl import Cell, html_table_to_markdown, otsl_to_html, otsl_to_markdown, parse_otsl

TABLES = json.loads((Path(__file__).parent / "fixtures" / "gateway" / "otsl_tables.json").read_text())


def test_simple_table() -> None:
    assert otsl_to_html(TABLES["simple"]) == (
        "<table><tr><td>Name</td><td>Age</td></tr><tr><td>Ann</td><td>31</td></tr><tr><td>Bob</td><td>27</td></tr></table>"
    )
    assert otsl_to_markdown(TABLES["simple"]) == "| Name | Age |\n|---|---|\n| Ann | 31 |\n| Bob | 27 |"


def test_colspan() -> None:
    table = parse_otsl(TABLES["colspan"])
    assert table is not None and (table.rows, table.cols) == (2, 3)
    assert table.cells[0] == Cell(0, 0, "Header spanning two", rowspan=1, colspan=2)
    assert otsl_to_html(TABLES["colspan"]).startswith('<table><tr><td colspan="2">Header spanning two</td><td>C</td>')
    assert otsl_to_markdown(TABLES["colspan"]).splitlines()[0] == "| Header spanning two |  | C |"


def test_rowspan() -> None:
    html = otsl_to_html(TABLES["rowspan"])
    assert html == (
        '<table><tr><td rowspan="2">Group</td><td>x</td></tr><tr><td>y</td></tr>'
        "<tr><td>Other</td><td>z</td></tr></table>"
    )
    assert otsl_to_markdown(TABLES["rowspan"]).splitlines()[2] == "|  | y |"


def test_two_by_two_span_with_xcel() -> None:
    table = parse_otsl(TABLES["block_2x2"])
    assert table is not None
    big = table.cells[0]
    assert (big.text, big.rowspan, big.colspan) == ("Big", 2, 2)
    assert [c.text for c in table.cells] == ["Big", "r", "s", "t", "u", "v"]
    assert otsl_to_html(TABLES["block_2x2"]).startswith(
        '<table><tr><td rowspan="2" colspan="2">Big</td><td>r</td></tr>'
    )


def test_ragged_rows_are_padded_and_empty_cells_kept() -> None:
    assert otsl_to_markdown(TABLES["ragged_and_empty"]) == "| a |  | c |\n|---|---|---|\n| d |  |  |"
    assert otsl_to_html(TABLES["ragged_and_empty"]).endswith("<tr><td>d</td><td></td><td></td></tr></table>")


def test_escaping() -> None:
    assert "<td>1 &lt; 2 &amp; 3</td>" in otsl_to_html(TABLES["escapes"])
    assert "a\\|b" in otsl_to_markdown(TABLES["escapes"])


@pytest.mark.parametrize("text", ["", "no tokens at all", "<nl><nl>"])
def test_no_table(text: str) -> None:
    assert otsl_to_html(text) is None
    assert otsl_to_markdown(text) is None


def test_cut_off_output_keeps_the_last_cell() -> None:
    assert otsl_to_markdown("<fcel>a<fcel>b<nl><fcel>c<fcel>d is cut") == "| a | b |\n|---|---|\n| c | d is cut |"


@pytest.mark.parametrize("name", sorted(TABLES))
def test_same_html_as_paddlex(name: str) -> None:
    """Our converter and PaddleX's (used inside the pipeline) agree, so both paths read alike."""
    from paddlex.inference.pipelines.paddleocr_vl.uilts import convert_otsl_to_html

    assert otsl_to_html(TABLES[name]) == convert_otsl_to_html(TABLES[name])


def test_html_table_to_markdown_with_spans() -> None:
    html = (
        '<table><thead><tr><th>Region</th><th>Q1</th><th>Q2</th></tr></thead><tbody><tr><td rowspan="2">North</td>'
        '<td>10</td><td>12</td></tr><tr><td>11</td><td>13</td></tr><tr><td colspan="2">South<br/>total</td>'
        "<td>9</td></tr></tbody></table>"
    )
    assert html_table_to_markdown(html) == (
        "| Region | Q1 | Q2 |\n|---|---|---|\n| North | 10 | 12 |\n|  | 11 | 13 |\n| South<br>total |  | 9 |"
    )
    assert html_table_to_markdown("<p>no table</p>") is None
    assert html_table_to_markdown("<table></table>") is None
