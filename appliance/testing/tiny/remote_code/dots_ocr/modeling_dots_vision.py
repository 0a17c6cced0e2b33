"""dots.ocr's vision tower module of the real repo: defines the class, registers nothing.

Never imported by vLLM (it has its own DotsVisionTransformer); present so the file set matches.
"""

from transformers import PreTrainedModel

from .configuration_dots import DotsVisionConfig


class DotsVisionTransformer(PreTrainedModel):
    config_class = DotsVisionConfig


__all__ = ["DotsVisionTransformer"]
