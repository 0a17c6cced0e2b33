"""Uploads → page images: PNG, JPEG, TIFF (every frame a page), WebP, PDF (pypdfium2).

The format is sniffed from the bytes, never taken from a file name or Content-Type. Every limit is
checked before the expensive step it guards: upload bytes before parsing, a frame's declared size
before its pixels are decoded (decompression bombs), the page count before rendering. Anything
malformed or over a limit raises a `DocumentError` subclass with a message for the API client.

Decoding is synchronous and CPU-bound: callers on an event loop run `decode_document` in a thread.
"""

from __future__ import annotations

import base64
import io
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image, ImageOps, UnidentifiedImageError

from appliance.errors import DocumentError, DocumentTooLargeError, UnsupportedDocumentError

Kind = Literal["png", "jpeg", "tiff", "webp", "pdf"]

DEFAULT_MAX_UPLOAD_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000  # per page: an A4 page at 600 dpi is 35 Mpx
DEFAULT_MAX_PAGES = 200
DEFAULT_DPI = 200  # dots.ocr's and PaddleX's PDF rendering resolution (PaddleX: scale 2.0 = 144 dpi)

# PIL's own bomb guard is a second line behind the explicit size checks below: it warns above the
# limit and raises above twice the limit. Process-wide, so set to the largest page we accept (and raised
# when a caller's Limits accept larger ones); warnings are not turned into errors (not thread-safe).
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS

_PDFIUM_LOCK = threading.Lock()  # pdfium is not thread-safe


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_pages: int = DEFAULT_MAX_PAGES


@dataclass(frozen=True)
class PageImage:
    """One page, decoded to RGB. `number` is 1-based in the uploaded document."""

    number: int
    image: Image.Image = field(repr=False)

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height

    def encode(self, fmt: str = "PNG") -> bytes:
        buf = io.BytesIO()
        self.image.save(buf, format=fmt)
        return buf.getvalue()

    def data_url(self, fmt: str = "PNG") -> str:
        """The page as a `data:` URL: how images travel to vLLM (never by fetchable URL)."""
        return f"data:image/{fmt.lower()};base64," + base64.b64encode(self.encode(fmt)).decode("ascii")


@dataclass(frozen=True)
class Document:
    kind: Kind
    total_pages: int  # in the upload, before the page range
    pages: list[PageImage]


def sniff(data: bytes) -> Kind | None:
    if data.startswith(b"%PDF-") or (b"%PDF-" in data[:1024]):
        return "pdf"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def parse_page_range(spec: str | None) -> tuple[int, int | None] | None:
    """'3' → (3, 3); '2-5' → (2, 5); '4-' → (4, None); None/'' → None. 1-based, inclusive."""
    if not spec:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(?:(-)\s*(\d+)?)?\s*", spec)
    if not m:
        raise DocumentError(f"page range {spec!r}: expected N, N-M or N-")
    first = int(m.group(1))
    last = int(m.group(3)) if m.group(3) else (None if m.group(2) else first)
    if first < 1 or (last is not None and last < first):
        raise DocumentError(f"page range {spec!r}: pages are numbered from 1 and the range must not be reversed")
    return first, last


def decode_document(
    data: bytes,
    *,
    limits: Limits | None = None,
    dpi: int = DEFAULT_DPI,
    page_range: tuple[int, int | None] | None = None,
) -> Document:
    """Bytes of an upload → RGB pages. Raises DocumentError (4xx) for anything it cannot accept."""
    limits = limits or Limits()
    if len(data) > limits.max_upload_bytes:
        raise DocumentTooLargeError(f"upload is {len(data)} bytes; the limit is {limits.max_upload_bytes}")
    if not data:
        raise DocumentError("upload is empty")
    kind = sniff(data)
    if kind is None:
        raise UnsupportedDocumentError(
            "unsupported file type (first bytes " + repr(data[:8]) + "); accepted: PDF, PNG, JPEG, TIFF, WebP"
        )
    if not 36 <= dpi <= 600:
        raise DocumentError(f"dpi {dpi}: must be between 36 and 600")
    if Image.MAX_IMAGE_PIXELS is not None and limits.max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limits.max_pixels  # PIL's guard never below ours (it refuses at twice its limit)
    if kind == "pdf":
        total, pages = _decode_pdf(data, limits, dpi, page_range)
    else:
        total, pages = _decode_image(data, kind, limits, page_range)
    return Document(kind=kind, total_pages=total, pages=pages)


def _select(total: int, page_range: tuple[int, int | None] | None, limits: Limits) -> range:
    first, last = page_range or (1, None)
    last = total if last is None else last
    if first > total or last > total:
        raise DocumentError(f"page range {first}-{last} is outside the document's {total} page(s)")
    if last - first + 1 > limits.max_pages:
        raise DocumentTooLargeError(
            f"{last - first + 1} pages selected; the limit is {limits.max_pages} (ask for a page range)"
        )
    return range(first, last + 1)


def _check_pixels(width: int, height: int, limits: Limits, where: str) -> None:
    if width <= 0 or height <= 0:
        raise DocumentError(f"{where}: empty image ({width}x{height})")
    if width * height > limits.max_pixels:
        raise DocumentTooLargeError(
            f"{where}: {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels} per page"
        )


# --- raster images --------------------------------------------------------------------------------


def _decode_image(
    data: bytes, kind: Kind, limits: Limits, page_range: tuple[int, int | None] | None
) -> tuple[int, list[PageImage]]:
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
        _check_pixels(img.width, img.height, limits, f"{kind.upper()} image")
        total = getattr(img, "n_frames", 1) if kind == "tiff" else 1
        selected = _select(total, page_range, limits)
        pages = []
        for number in selected:
            if total > 1:
                img.seek(number - 1)
                _check_pixels(img.width, img.height, limits, f"TIFF page {number}")
            pages.append(PageImage(number, _to_rgb(img)))
        return total, pages
    except DocumentError:
        raise
    except Image.DecompressionBombError as exc:
        raise DocumentTooLargeError(f"{kind.upper()} image: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise DocumentError(f"malformed {kind.upper()} image: {exc}") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    """Decode one frame to RGB: EXIF rotation applied, transparency on white, 16-bit scaled to 8."""
    img.load()
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        img = img.convert("I")
    if img.mode == "I":
        img = img.point(lambda v: v * (1 / 256)).convert("L")
    if img.mode == "F":
        img = img.convert("L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


# --- PDF ------------------------------------------------------------------------------------------


def _decode_pdf(
    data: bytes, limits: Limits, dpi: int, page_range: tuple[int, int | None] | None
) -> tuple[int, list[PageImage]]:
    import pypdfium2 as pdfium

    with _PDFIUM_LOCK:
        try:
            pdf = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            reason = "encrypted (password protected)" if "password" in str(exc).lower() else str(exc)
            raise DocumentError(f"malformed PDF: {reason}") from exc
        try:
            total = len(pdf)
            if total == 0:
                raise DocumentError("PDF has no pages")
            selected = _select(total, page_range, limits)
            pages = [PageImage(number, image) for number, image in _render(pdf, selected, dpi, limits)]
            return total, pages
        finally:
            pdf.close()


def _render(pdf, numbers: range, dpi: int, limits: Limits) -> Iterator[tuple[int, Image.Image]]:
    """Render each page at `dpi`, lowered for pages whose rendering would exceed the pixel limit."""
    import pypdfium2 as pdfium

    for number in numbers:
        page = pdf[number - 1]
        try:
            width_pt, height_pt = page.get_size()  # /Rotate already applied by pdfium
            if width_pt <= 0 or height_pt <= 0:
                raise DocumentError(f"PDF page {number}: empty page size {width_pt}x{height_pt}")
            scale = dpi / 72
            pixels = width_pt * height_pt * scale * scale
            if pixels > limits.max_pixels:  # a poster-sized page: render it smaller, not refuse it
                scale *= (limits.max_pixels / pixels) ** 0.5 * 0.999
            _check_pixels(round(width_pt * scale), round(height_pt * scale), limits, f"PDF page {number}")
            bitmap = page.render(scale=scale, draw_annots=True)
            yield number, bitmap.to_pil().convert("RGB")
        except pdfium.PdfiumError as exc:
            raise DocumentError(f"PDF page {number} cannot be rendered: {exc}") from exc
        finally:
            page.close()
