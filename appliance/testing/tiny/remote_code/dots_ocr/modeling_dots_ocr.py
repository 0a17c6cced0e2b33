"""dots.ocr's transformers model class, named by `auto_map.AutoModelForCausalLM`.

vLLM never imports it (its own `DotsOCRForCausalLM` serves the checkpoint); it is here because the
real repo has it, with the same import-time behaviour: it defines the class and registers nothing.
"""

from transformers import Qwen2ForCausalLM

from .configuration_dots import DotsOCRConfig


class DotsOCRForCausalLM(Qwen2ForCausalLM):
    config_class = DotsOCRConfig


__all__ = ["DotsOCRForCausalLM"]
