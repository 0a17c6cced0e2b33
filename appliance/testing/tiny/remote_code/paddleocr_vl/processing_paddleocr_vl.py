"""PaddleOCR-VL's remote processor (`auto_map.AutoProcessor`): defines the class, registers nothing."""

from transformers.models.paddleocr_vl.processing_paddleocr_vl import (
    PaddleOCRVLProcessor as _Processor,
)


class PaddleOCRVLProcessor(_Processor):
    pass


__all__ = ["PaddleOCRVLProcessor"]
