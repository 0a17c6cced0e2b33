"""The real repo's out-of-tree vLLM model (for vLLM versions without dots.ocr in tree).

Import-time behaviour as the real file: it defines `DotsOCRForCausalLM` and registers it with
vLLM's model registry. vLLM 0.32 has the model in tree and never imports this file; here the class
is vLLM's own, so importing it changes nothing vLLM would not do anyway.
"""

from vllm import ModelRegistry
from vllm.model_executor.models.dots_ocr import DotsOCRForCausalLM as _InTree


class DotsOCRForCausalLM(_InTree):
    pass


ModelRegistry.register_model("DotsOCRForCausalLM", DotsOCRForCausalLM)
