"""PaddleOCR-VL's remote configuration module (`auto_map.AutoConfig`), as the real repo ships it.

The real module is a transformers-4 port of the classes transformers 5 now carries natively; it
defines them and registers nothing. Only loaded with --trust-remote-code, which the appliance does
not pass for PaddleOCR-VL (manifests/facts/paddleocr-vl.yaml): the native classes serve.
"""

from transformers.models.paddleocr_vl.configuration_paddleocr_vl import (
    PaddleOCRVisionConfig as _VisionConfig,
)
from transformers.models.paddleocr_vl.configuration_paddleocr_vl import (
    PaddleOCRVLConfig as _Config,
)


class PaddleOCRVisionConfig(_VisionConfig):
    pass


class PaddleOCRVLConfig(_Config):
    pass


__all__ = ["PaddleOCRVLConfig", "PaddleOCRVisionConfig"]
