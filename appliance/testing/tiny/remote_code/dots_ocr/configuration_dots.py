"""Configuration of dots.ocr: a Qwen2 language model fed by a dots ViT vision tower.

Shipped inside the model directory and loaded through `auto_map` with trust_remote_code, because
neither transformers nor vLLM registers the `dots_ocr` model type. vLLM only checks the class name
`DotsOCRConfig` and reads the attributes set here. Self-contained on purpose: transformers imports
this file alone from the model directory. Written for transformers 4 and 5 (`__init__` style, which
transformers 5 still accepts from remote code).

Like the real repo's file it also defines the processor (`preprocessor_config.json` names it in
`auto_map.AutoProcessor`) and registers both with transformers when imported: that import-time
registration is what vLLM's processor loading goes through, so the tiny repo must do it too.
"""

from typing import Any

from transformers import AutoProcessor, PretrainedConfig, Qwen2_5_VLProcessor, Qwen2Config
from transformers.models.auto.configuration_auto import CONFIG_MAPPING


class DotsVisionConfig(PretrainedConfig):
    model_type = "dots_vit"

    def __init__(
        self,
        embed_dim: int = 1536,
        hidden_size: int = 1536,
        intermediate_size: int = 4224,
        num_hidden_layers: int = 42,
        num_attention_heads: int = 12,
        num_channels: int = 3,
        patch_size: int = 14,
        spatial_merge_size: int = 2,
        temporal_patch_size: int = 1,
        rms_norm_eps: float = 1e-5,
        use_bias: bool = False,
        post_norm: bool = True,
        is_causal: bool = False,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.embed_dim = embed_dim  # width inside the ViT
        self.hidden_size = hidden_size  # width after the patch merger, equal to the LM's
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_channels = num_channels
        self.patch_size = patch_size
        self.spatial_merge_size = spatial_merge_size
        self.temporal_patch_size = temporal_patch_size
        self.rms_norm_eps = rms_norm_eps
        self.use_bias = use_bias
        self.post_norm = post_norm
        self.is_causal = is_causal
        self.initializer_range = initializer_range


class DotsOCRConfig(Qwen2Config):
    model_type = "dots_ocr"

    def __init__(
        self,
        image_token_id: int = 151665,
        video_token_id: int = 151656,
        vision_config: "dict[str, Any] | DotsVisionConfig | None" = None,
        **kwargs: Any,
    ) -> None:
        # Keep the multimodal keys away from Qwen2Config, which would store them untyped.
        super().__init__(**kwargs)
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id
        if isinstance(vision_config, DotsVisionConfig):
            self.vision_config = vision_config
        else:
            self.vision_config = DotsVisionConfig(**(vision_config or {}))


class DotsVLProcessor(Qwen2_5_VLProcessor):
    # As the real one: image token from the tokenizer, else dots' own; no video processor passed.
    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any):
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.image_token = "<|imgpad|>" if not hasattr(tokenizer, "image_token") else tokenizer.image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)


AutoProcessor.register("dots_ocr", DotsVLProcessor)
CONFIG_MAPPING.register("dots_ocr", DotsOCRConfig)

__all__ = ["DotsOCRConfig", "DotsVLProcessor", "DotsVisionConfig"]
