"""Uploads → pages: formats, limits checked before decoding, typed 4xx errors."""

from __future__ import annotations

import io
import struct
import time
import zlib

import pytest
from PIL import Image

from appliance.errors import DocumentError, DocumentTooLargeError, UnsupportedDocumentError
from appliance.gateway.documents import Limits, PageImage, decode_document, parse_page_range, sniff
from tests.documents_support import blank_pdf


def _image(fmt: str, size: tuple[int, int] = (64, 48), mode: str = "RGB", **save: object) -> bytes:
    img = Image.new(mode, size, "white" if mode in ("RGB", "L") else (0, 0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("fmt,kind", [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp"), ("TIFF", "tiff")])
def test_single_images(fmt: str, kind: str) -> None:
    doc = decode_document(_image(fmt))
    assert (doc.kind, doc.total_pages, len(doc.pages)) == (kind, 1, 1)
    page = doc.pages[0]
    assert (page.number, page.width, page.height, page.image.mode) == (1, 64, 48, "RGB")


def test_multipage_tiff_and_page_range() -> None:
    frames = [Image.new("RGB", (40 + 10 * i, 30), "white") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    doc = decode_document(buf.getvalue())
    assert doc.kind == "tiff" and doc.total_pages == 3
    assert [(p.number, p.width) for p in doc.pages] == [(1, 40), (2, 50), (3, 60)]
    doc = decode_document(buf.getvalue(), page_range=(2, 3))
    assert [p.number for p in doc.pages] == [2, 3]


def test_transparency_goes_on_white_and_16_bit_is_scaled() -> None:
    page = decode_document(_image("PNG", mode="RGBA")).pages[0]
    assert page.image.getpixel((0, 0)) == (255, 255, 255)
    img16 = Image.new("I;16", (8, 8), 65535)
    buf = io.BytesIO()
    img16.save(buf, format="PNG")
    assert decode_document(buf.getvalue()).pages[0].image.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (60, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    page = decode_document(buf.getvalue()).pages[0]
    assert (page.width, page.height) == (20, 60)


def test_pdf_pages_dpi_and_range() -> None:
    data = blank_pdf([(612, 792), (792, 612), (300, 300)])  # points: letter portrait, landscape, square
    doc = decode_document(data, dpi=72)
    assert doc.kind == "pdf" and doc.total_pages == 3
    assert [(p.width, p.height) for p in doc.pages] == [(612, 792), (792, 612), (300, 300)]
    doc = decode_document(data, dpi=144, page_range=(2, 2))
    assert [(p.number, p.width, p.height) for p in doc.pages] == [(2, 1584, 1224)]
    assert doc.pages[0].image.getpixel((5, 5)) == (255, 255, 255)


def test_pdf_page_bigger_than_the_pixel_limit_is_rendered_smaller() -> None:
    doc = decode_document(blank_pdf([(2000, 2000)]), dpi=200, limits=Limits(max_pixels=1_000_000))
    page = doc.pages[0]
    assert page.width * page.height <= 1_000_000
    assert page.width > 900


def test_limits() -> None:
    with pytest.raises(DocumentTooLargeError, match="limit is 100"):
        decode_document(b"x" * 101, limits=Limits(max_upload_bytes=100))
    with pytest.raises(DocumentTooLargeError, match="3 pages selected; the limit is 2"):
        decode_document(blank_pdf([(100, 100)] * 3), limits=Limits(max_pages=2))
    assert len(decode_document(blank_pdf([(100, 100)] * 3), limits=Limits(max_pages=2), page_range=(2, 3)).pages) == 2
    with pytest.raises(DocumentError, match="outside the document's 3 page"):
        decode_document(blank_pdf([(100, 100)] * 3), page_range=(4, 5))


def test_decompression_bomb_is_refused_before_decoding() -> None:
    data = _png_header_only(100_000, 100_000)  # 10 Gpx declared, 100 bytes of data
    start = time.perf_counter()
    with pytest.raises(DocumentTooLargeError, match="pixels"):  # PIL's guard or ours, both before decoding
        decode_document(data)
    assert time.perf_counter() - start < 1.0
    with pytest.raises(DocumentTooLargeError):
        decode_document(_image("PNG", size=(200, 200)), limits=Limits(max_pixels=10_000))


@pytest.mark.parametrize(
    "data,error,message",
    [
        (b"", DocumentError, "empty"),
        (b"GIF89a\x01\x00\x01\x00", UnsupportedDocumentError, "accepted: PDF, PNG"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, DocumentError, "malformed PNG"),
        (b"\xff\xd8\xff\xe0garbage", DocumentError, "malformed JPEG"),
        (b"%PDF-1.7\nnot really a pdf", DocumentError, "malformed PDF"),
    ],
)
def test_malformed_input(data: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as info:
        decode_document(data)
    assert 400 <= info.value.status_code < 500


def test_truncated_png_is_a_4xx() -> None:
    data = _image("PNG", size=(300, 300))
    with pytest.raises(DocumentError, match="malformed PNG"):
        decode_document(data[: len(data) // 2])


def test_sniff_and_page_range_parsing() -> None:
    assert sniff(blank_pdf([(10, 10)])) == "pdf"
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff(b"hello") is None
    assert parse_page_range("3") == (3, 3)
    assert parse_page_range(" 2 - 5 ") == (2, 5)
    assert parse_page_range("4-") == (4, None)
    assert parse_page_range(None) is None
    for bad in ("0", "5-2", "a-b", "1,2"):
        with pytest.raises(DocumentError):
            parse_page_range(bad)


def test_page_image_data_url() -> None:
    page = PageImage(1, Image.new("RGB", (4, 4), "white"))
    assert page.data_url().startswith("data:image/png;base64,iVBOR")
