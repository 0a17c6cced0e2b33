"""PaddleOCR-VL's remote model class (`auto_map.AutoModel`): defines the class, registers nothing.

vLLM never imports it (its own PaddleOCRVLForConditionalGeneration serves the checkpoint).
"""

from transformers.models.paddleocr_vl.modeling_paddleocr_vl import (
    PaddleOCRVLForConditionalGeneration as _Model,
)

from .configuration_paddleocr_vl import PaddleOCRVLConfig


class PaddleOCRVLForConditionalGeneration(_Model):
    config_class = PaddleOCRVLConfig


__all__ = ["PaddleOCRVLForConditionalGeneration"]
