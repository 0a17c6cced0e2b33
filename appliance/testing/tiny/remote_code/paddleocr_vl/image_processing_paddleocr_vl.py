"""PaddleOCR-VL's remote image processor (`auto_map.AutoImageProcessor` in preprocessor_config.json).

The remote processor keeps its pixel limits as `min_pixels` / `max_pixels` attributes (vLLM's
PaddleOCR-VL code reads them when served with --trust-remote-code); the native one keeps them in
`size`. Defines the class, registers nothing.
"""

from typing import Any

from transformers.models.paddleocr_vl.image_processing_paddleocr_vl import (
    PaddleOCRVLImageProcessor as _ImageProcessor,
)


class PaddleOCRVLImageProcessor(_ImageProcessor):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_pixels = self.size["shortest_edge"]
        self.max_pixels = self.size["longest_edge"]


__all__ = ["PaddleOCRVLImageProcessor"]
