"""PaddleX-compatible `/layout-parsing`: request/response models and the converter from PageResult.

The models reproduce PaddleX 3.7.2's serving schema for the PaddleOCR-VL pipeline
(`paddlex/inference/serving/schemas/paddleocr_vl.py`: `InferRequest`, `InferResult`,
`LayoutParsingResult`, `MarkdownData`; `schemas/shared/ocr.py`: `BaseInferRequest`;
`schemas/shared/export.py`: `OutputFormatsMixin`, `DocumentExports`; `infra/models.py`: the
`AIStudioResultResponse` / `AIStudioNoResultResponse` envelope and `DataInfo`), field for field with
the same defaults and validators, so PaddleX clients (and `paddleocr`'s own client) work unchanged.
PaddleX answers with `response_model_exclude_none=True`: use `dump()` for the JSON body.

Differences, all deliberate: `file` as a URL is refused (an offline appliance fetches nothing); a
missing `fileType` is sniffed from the bytes instead of refused; options that steer PaddleX's own
layout model and sampling are accepted and ignored (the engine's deployment fixes them);
`promptLabel` seal/spotting is refused (422) even with layout detection on; no
visualisation images, no Markdown figure crops, no docx export.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable
from typing import Any, Final, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from appliance.errors import DocumentError, DocumentTooLargeError, TaskNotSupportedError
from appliance.gateway.documents import Document, sniff
from appliance.gateway.openapi import PositiveJsonInt
from appliance.gateway.protocol import PageResult, Task

INFER_ENDPOINT: Final[str] = "/layout-parsing"
PDF_DPI: Final[int] = 144  # PaddleX renders PDF pages at scale 2.0 (PADDLE_PDX_PDF_RENDER_SCALE): same pixel frame

# --- schemas/shared/export.py ---------------------------------------------------------------------

SUPPORTED_OUTPUT_FORMATS: frozenset[str] = frozenset({"docx"})


class ExportContent(BaseModel):
    content: str
    fileName: str


class DocumentExports(BaseModel):
    model_config = ConfigDict(extra="forbid")

    docx: ExportContent | None = None


class OutputFormatsMixin(BaseModel):
    outputFormats: list[str] | None = Field(
        default=None, description='Optional list of extra formats to return, e.g. ["docx"].'
    )

    @field_validator("outputFormats")
    @classmethod
    def _check_output_formats(cls, v: list[str] | None) -> list[str] | None:
        for fmt in v or []:
            if fmt not in SUPPORTED_OUTPUT_FORMATS:
                raise ValueError(
                    f"Unsupported `outputFormats` entry {fmt!r}. Supported values: {sorted(SUPPORTED_OUTPUT_FORMATS)}"
                )
        return v


# --- schemas/shared/ocr.py ------------------------------------------------------------------------

FileType = Literal[0, 1]  # 0: PDF, 1: image


class BaseInferRequest(BaseModel):
    file: str
    fileType: FileType | None = None


# --- schemas/paddleocr_vl.py ----------------------------------------------------------------------

_PROMPT_LABELS = ("ocr", "formula", "table", "chart", "seal", "spotting")
_MERGE_MODES = ("large", "small", "union")
_UNSERVED_LABELS = ("seal", "spotting")


def _each_value(v: Any, check: Callable[..., None]) -> Any:
    """PaddleX's per-class options: one value, or a dict of class → value, each checked."""
    if isinstance(v, dict):
        for key, value in v.items():
            check(value, f" value for key '{key}'")
    else:
        check(v)
    return v


def _document_checks(schema: dict[str, Any]) -> None:
    """The JSON Schema says what the validators below check, so generated clients and fuzzers know it
    (minPixels ≤ maxPixels aside: JSON Schema cannot compare two values)."""
    positive = {"type": "number", "exclusiveMinimum": 0}
    unit = {"type": "number", "minimum": 0, "maximum": 1}
    ratio = {"anyOf": [positive, {"type": "array", "items": positive, "minItems": 2, "maxItems": 2}]}
    merge = {"type": "string", "enum": list(_MERGE_MODES)}

    def optional(one: dict[str, Any], per_class: bool = False) -> dict[str, Any]:
        forms = [one, {"type": "object", "additionalProperties": one}] if per_class else [one]
        return {"anyOf": [*forms, {"type": "null"}]}

    schema["properties"] |= {
        "outputFormats": optional({"type": "array", "items": {"enum": sorted(SUPPORTED_OUTPUT_FORMATS)}}),
        "topP": optional({"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
        "temperature": optional({"type": "number", "minimum": 0}),
        "repetitionPenalty": optional(positive),
        "promptLabel": optional({"type": "string", "enum": [x for x in _PROMPT_LABELS if x not in _UNSERVED_LABELS]}),
        "layoutThreshold": optional(unit, per_class=True),
        "layoutUnclipRatio": optional(ratio, per_class=True),
        "layoutMergeBboxesMode": optional(merge, per_class=True),
    }


class InferRequest(OutputFormatsMixin, BaseInferRequest):
    model_config = ConfigDict(json_schema_extra=_document_checks)

    useDocOrientationClassify: bool | None = None
    useDocUnwarping: bool | None = None
    useLayoutDetection: bool | None = None
    useChartRecognition: bool | None = None
    useSealRecognition: bool | None = None
    useOcrForImageBlock: bool | None = None
    layoutThreshold: float | dict | None = None
    layoutNms: bool | None = None
    layoutUnclipRatio: float | tuple[float, float] | dict | None = None
    layoutMergeBboxesMode: str | dict | None = None
    layoutShapeMode: Literal["rect", "quad", "poly", "auto"] = "auto"
    promptLabel: str | None = None
    formatBlockContent: bool | None = None
    repetitionPenalty: float | None = None
    temperature: float | None = None
    topP: float | None = None
    minPixels: PositiveJsonInt | None = None
    maxPixels: PositiveJsonInt | None = None
    maxNewTokens: PositiveJsonInt | None = None
    mergeLayoutBlocks: bool | None = None
    markdownIgnoreLabels: list[str] | None = None
    vlmExtraArgs: dict | None = None
    prettifyMarkdown: bool = True
    showFormulaNumber: bool = False
    returnMarkdownImages: bool = True
    restructurePages: bool = False
    mergeTables: bool = True
    relevelTitles: bool = True
    visualize: bool | None = None
    logId: str | None = None

    @field_validator("topP")
    @classmethod
    def validate_top_p(cls, v: float | None) -> float | None:
        if v is not None and not (0 < v <= 1):
            raise ValueError(f"`topP` must be > 0 and ≤ 1; got: {v}")
        return v

    @field_validator("temperature")
    @classmethod
    def validate_temperature(cls, v: float | None) -> float | None:
        if v is not None and v < 0:
            raise ValueError(f"`temperature` must be ≥ 0; got: {v}")
        return v

    @field_validator("repetitionPenalty")
    @classmethod
    def validate_repetition_penalty(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError(f"`repetitionPenalty` must be > 0; got: {v}")
        return v

    @field_validator("promptLabel")
    @classmethod
    def validate_prompt_label(cls, v: str | None) -> str | None:
        if v is not None and v not in _PROMPT_LABELS:
            raise ValueError(f"`promptLabel` must be one of: {', '.join(_PROMPT_LABELS)}; got: {v}")
        return v

    @field_validator("layoutMergeBboxesMode")
    @classmethod
    def validate_merge_bboxes_mode(cls, v: str | dict | None) -> str | dict | None:
        if v is None:
            return v
        values = v.values() if isinstance(v, dict) else [v]
        for value in values:
            if not isinstance(value, str):
                raise ValueError(
                    f"`layoutMergeBboxesMode` dictionary values must be strings; got: {type(value).__name__}"
                )
            if value not in _MERGE_MODES:
                raise ValueError(f"`layoutMergeBboxesMode` must be one of: {', '.join(_MERGE_MODES)}; got: {value}")
        return v

    @field_validator("layoutUnclipRatio", mode="before")  # before: PaddleX's own check refuses the pair it types
    @classmethod
    def validate_unclip_ratio(cls, v: Any) -> Any:
        if v is None:
            return v

        def check(value: Any, context: str = "") -> None:
            if isinstance(value, int | float) and not isinstance(value, bool):
                if value <= 0:
                    raise ValueError(f"`layoutUnclipRatio`{context} must be > 0; got: {value}")
            elif isinstance(value, list | tuple):
                if len(value) != 2:
                    raise ValueError(f"`layoutUnclipRatio`{context} must be two numbers; got: {len(value)} values")
                for i, item in enumerate(value):
                    if not isinstance(item, int | float):
                        raise ValueError(
                            f"`layoutUnclipRatio`{context} values must be numbers; got: {type(item).__name__} at position {i}"  # noqa: E501
                        )
                    if item <= 0:
                        raise ValueError(
                            f"`layoutUnclipRatio`{context} values must be > 0; got: {item} at position {i}"
                        )
            else:
                raise ValueError(
                    f"`layoutUnclipRatio`{context} must be a number or two numbers; got: {type(value).__name__}"
                )

        checked = _each_value(v, check)
        return tuple(checked) if isinstance(checked, list) else checked  # the pair, also when parsed strictly

    @field_validator("layoutThreshold")
    @classmethod
    def validate_threshold(cls, v: Any) -> Any:
        if v is None:
            return v

        def check(value: Any, context: str = "") -> None:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"`layoutThreshold`{context} must be a number; got: {type(value).__name__}")
            if value < 0 or value > 1:
                raise ValueError(f"`layoutThreshold`{context} must be between 0 and 1 inclusive; got: {value}")

        return _each_value(v, check)

    @model_validator(mode="after")
    def validate_pixel_range(self) -> InferRequest:
        if self.minPixels is not None and self.maxPixels is not None and self.minPixels > self.maxPixels:
            raise ValueError(f"`minPixels` ({self.minPixels}) cannot be greater than `maxPixels` ({self.maxPixels})")
        return self


class MarkdownData(BaseModel):
    text: str
    images: dict[str, str] | None = None


class LayoutParsingResult(BaseModel):
    prunedResult: dict
    markdown: MarkdownData
    outputImages: dict[str, str] | None = None
    inputImage: str | None = None
    exports: DocumentExports | None = None


# --- infra/models.py ------------------------------------------------------------------------------


class ImageInfo(BaseModel):
    width: int
    height: int
    type: Literal["image"] = "image"


class PDFPageInfo(BaseModel):
    width: int
    height: int


class PDFInfo(BaseModel):
    numPages: int
    pages: list[PDFPageInfo]
    type: Literal["pdf"] = "pdf"


class TIFFInfo(BaseModel):
    numPages: int
    pages: list[PDFPageInfo]
    type: Literal["tiff"] = "tiff"


DataInfo = ImageInfo | PDFInfo | TIFFInfo


class InferResult(BaseModel):
    layoutParsingResults: list[LayoutParsingResult]
    dataInfo: DataInfo


ResultT = TypeVar("ResultT", bound=BaseModel)


class AIStudioResultResponse(BaseModel, Generic[ResultT]):
    logId: str
    result: ResultT
    errorCode: Literal[0] = 0
    errorMsg: Literal["Success"] = "Success"


class AIStudioNoResultResponse(BaseModel):
    logId: str
    errorCode: int
    errorMsg: str


def generate_log_id() -> str:
    return str(uuid.uuid4())


def dump(model: BaseModel) -> dict[str, Any]:
    """The JSON body as PaddleX sends it (`response_model_exclude_none=True`)."""
    return model.model_dump(mode="json", exclude_none=True)


def error_response(status_code: int, message: str, log_id: str | None = None) -> AIStudioNoResultResponse:
    return AIStudioNoResultResponse(logId=log_id or generate_log_id(), errorCode=status_code, errorMsg=message)


# --- request → our terms --------------------------------------------------------------------------

_URL_RE = re.compile(r"^https?://", re.I)
_DATA_URL_RE = re.compile(r"^data:[\w/+.-]*;base64,", re.I)


def decode_file(request: BaseInferRequest, max_bytes: int) -> bytes:
    """`file` (base64, or a data: URL) → bytes; URLs are refused; `fileType` must match the content."""
    if _URL_RE.match(request.file):
        raise DocumentError("`file` is a URL: this appliance is offline and fetches nothing; send the file as base64")
    payload = _DATA_URL_RE.sub("", request.file, count=1)
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise DocumentTooLargeError(f"`file` decodes to more than {max_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise DocumentError(f"`file` is not valid base64: {exc}") from exc
    kind = sniff(data)
    if request.fileType == 0 and kind not in (None, "pdf"):
        raise DocumentError(f"`fileType` is 0 (PDF) but the file is {kind.upper()}")
    if request.fileType == 1 and kind == "pdf":
        raise DocumentError("`fileType` is 1 (image) but the file is a PDF")
    return data


def task_of(request: InferRequest, has_layout: bool = True) -> Task:
    """PaddleX's switches → our task: a `promptLabel` with layout off is a single-task request. Labels
    the appliance does not serve are refused even where PaddleX would ignore them, as the document says."""
    if request.promptLabel in _UNSERVED_LABELS:
        raise TaskNotSupportedError(f"promptLabel {request.promptLabel!r} is not served by this appliance")
    if request.promptLabel is not None and (request.useLayoutDetection is False or not has_layout):
        label = request.promptLabel
        return {"ocr": Task.text, "table": Task.table, "formula": Task.formula, "chart": Task.chart}[label]
    if request.useLayoutDetection is False:
        return Task.text
    return Task.layout


# --- PageResult → PaddleX result ------------------------------------------------------------------

# PaddleX's labels that get no reading-order number (result.py SKIP_ORDER_LABELS) + markdown_ignore_labels
_SKIP_ORDER = {
    "figure_title", "vision_footnote", "image", "chart", "table", "header", "header_image", "footer",
    "footer_image", "footnote", "aside_text", "number",
}  # fmt: skip
_DEFAULT_IGNORE_LABELS = ["number", "footnote", "header", "header_image", "footer", "footer_image", "aside_text"]
# our categories (lower-case, engine-specific) → PP-DocLayout's label vocabulary where they differ
_LABEL_BY_CATEGORY = {
    "title": "doc_title",
    "section-header": "paragraph_title",
    "page-header": "header",
    "page-footer": "footer",
    "picture": "image",
    "caption": "figure_title",
    "list-item": "text",
    "formula": "display_formula",
}

# PaddleOCR-VL's own layout labels that its adapter renames (engines/paddleocr_vl.py CATEGORY_BY_LABEL),
# given back as PaddleX says them; "text" stays (PaddleX's no-layout "ocr" is not told apart).
_PADDLE_LABEL_BY_CATEGORY = {"title": "doc_title", "section-header": "paragraph_title"}


def pruned_result(page: PageResult, *, page_count: int | None, request: InferRequest | None = None) -> dict[str, Any]:
    """The `prunedResult` PaddleX's PaddleOCR-VL pipeline would give for this page."""
    has_boxes = any(b.bbox is not None for b in page.blocks)
    parsing = []
    order = 0
    for i, block in enumerate(page.blocks):
        label = (
            _PADDLE_LABEL_BY_CATEGORY.get(block.category, block.category)
            if page.engine == "paddleocr-vl"
            else _LABEL_BY_CATEGORY.get(block.category, block.category)
        )
        if label not in _SKIP_ORDER:
            order += 1
        parsing.append(
            {
                "block_label": label,
                "block_content": block.html if block.html is not None else block.text,
                "block_bbox": block.bbox if block.bbox is not None else [0, 0, page.width, page.height],
                "block_id": i,
                "block_order": order if label not in _SKIP_ORDER else None,
                "group_id": i,
            }
        )
    ignore = request.markdownIgnoreLabels if request and request.markdownIgnoreLabels else _DEFAULT_IGNORE_LABELS
    return {
        "page_count": page_count,
        "width": page.width,
        "height": page.height,
        "model_settings": {
            "use_doc_preprocessor": False,
            "use_layout_detection": page.task == Task.layout and has_boxes,
            "use_chart_recognition": page.task == Task.chart,
            "use_seal_recognition": False,
            "use_ocr_for_image_block": False,
            "format_block_content": False,
            "merge_layout_blocks": True,
            "markdown_ignore_labels": ignore,
            "return_layout_polygon_points": False,
        },
        "parsing_res_list": parsing,
    }


def data_info(document: Document) -> ImageInfo | PDFInfo | TIFFInfo:
    pages = [PDFPageInfo(width=p.width, height=p.height) for p in document.pages]
    if document.kind == "pdf":
        return PDFInfo(numPages=len(pages), pages=pages)
    if document.kind == "tiff" and document.total_pages > 1:
        return TIFFInfo(numPages=len(pages), pages=pages)
    return ImageInfo(width=pages[0].width, height=pages[0].height)


def infer_response(
    request: InferRequest, document: Document, pages: list[PageResult], log_id: str
) -> AIStudioResultResponse[InferResult]:
    page_count = document.total_pages if document.kind == "pdf" else None
    results = [
        LayoutParsingResult(
            prunedResult=pruned_result(page, page_count=page_count, request=request),
            markdown=MarkdownData(text=page.markdown, images={} if request.returnMarkdownImages else None),
        )
        for page in pages
    ]
    return AIStudioResultResponse[InferResult](
        logId=log_id, result=InferResult(layoutParsingResults=results, dataInfo=data_info(document))
    )
