"""Documents the gateway tests feed in."""

from __future__ import annotations

import io

import pypdfium2 as pdfium


def blank_pdf(sizes: list[tuple[float, float]]) -> bytes:
    """A PDF of blank pages of these sizes in points (at 72 dpi: these pixel sizes)."""
    pdf = pdfium.PdfDocument.new()
    for width, height in sizes:
        pdf.new_page(width, height)
    buffer = io.BytesIO()
    pdf.save(buffer)
    pdf.close()
    return buffer.getvalue()
