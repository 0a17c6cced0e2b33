"""Tiny dots.ocr (`DotsOCRForCausalLM`): the structure of rednote-hilab/dots.ocr (manifests/facts/dots-ocr.yaml).

The repo carries the real repo's remote-code modules: `configuration_dots.py` (config classes and
the `DotsVLProcessor`, both registered with transformers at import; named by `auto_map` in
config.json and preprocessor_config.json, served with --trust-remote-code) and the `modeling_*.py`
files vLLM never imports. The chat template is the legacy `chat_template.json`. vLLM brings its own
model code. Weights: a Qwen2 causal LM state dict plus `vision_tower.*`.
"""

from __future__ import annotations

from appliance.testing.tiny._common import (
    HEADS,
    HIDDEN,
    INTERMEDIATE,
    KV_HEADS,
    LAYERS,
    MAX_PIXELS,
    Files,
    Tokenizer,
    decoder_tensors,
    embedding_tensors,
    layer_norm,
    linear,
    remote_code,
    repo_files,
)
from appliance.testing.tiny._weights import TensorSpec

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|img|>",
    "<|imgpad|>",
    "<|endofimg|>",
    "<|system|>",
    "<|endofsystem|>",
    "<|user|>",
    "<|endofuser|>",
    "<|assistant|>",
    "<|endofassistant|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

PATCH, MERGE = 14, 2
REMOTE_CODE = (
    "configuration_dots.py",
    "modeling_dots_ocr.py",
    "modeling_dots_ocr_vllm.py",
    "modeling_dots_vision.py",
)

CHAT_TEMPLATE = r"""{%- for message in messages %}
{%- if message.role == 'system' %}
{{- '<|system|>' }}
{%- elif message.role == 'user' %}
{{- '<|user|>' }}
{%- else %}
{{- '<|assistant|>' }}
{%- endif %}
{%- if message.content is string %}
{{- message.content }}
{%- else %}
{%- for item in message.content %}
{%- if item.type == 'image' or item.type == 'image_url' or 'image' in item %}
{{- '<|img|><|imgpad|><|endofimg|>' }}
{%- elif item.type == 'text' %}
{{- item.text }}
{%- endif %}
{%- endfor %}
{%- endif %}
{%- if message.role == 'system' %}
{{- '<|endofsystem|>\n' }}
{%- elif message.role == 'user' %}
{{- '<|endofuser|>' }}
{%- else %}
{{- '<|endofassistant|>' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|assistant|>' }}
{%- endif %}
"""


def _vision_tensors() -> list[TensorSpec]:
    p = "vision_tower."
    specs = [
        TensorSpec(f"{p}patch_embed.patchifier.proj.weight", (HIDDEN, 3, PATCH, PATCH)),
        TensorSpec(f"{p}patch_embed.patchifier.proj.bias", (HIDDEN,), "zeros"),
        TensorSpec(f"{p}patch_embed.patchifier.norm.weight", (HIDDEN,), "ones"),
    ]
    for i in range(LAYERS):
        b = f"{p}blocks.{i}."
        specs += [
            TensorSpec(f"{b}norm1.weight", (HIDDEN,), "ones"),
            TensorSpec(f"{b}norm2.weight", (HIDDEN,), "ones"),
            # use_bias=False, as in the real tower: attention and SwiGLU without biases.
            *linear(f"{b}attn.qkv", 3 * HIDDEN, HIDDEN, bias=False),
            *linear(f"{b}attn.proj", HIDDEN, HIDDEN, bias=False),
            *linear(f"{b}mlp.fc1", INTERMEDIATE, HIDDEN, bias=False),
            *linear(f"{b}mlp.fc3", INTERMEDIATE, HIDDEN, bias=False),
            *linear(f"{b}mlp.fc2", HIDDEN, INTERMEDIATE, bias=False),
        ]
    merged = HIDDEN * MERGE * MERGE
    specs += [
        TensorSpec(f"{p}post_trunk_norm.weight", (HIDDEN,), "ones"),
        *layer_norm(f"{p}merger.ln_q", HIDDEN),
        *linear(f"{p}merger.mlp.0", merged, merged),
        *linear(f"{p}merger.mlp.2", HIDDEN, merged),
    ]
    return specs


def build(seed: int) -> Files:
    tok = Tokenizer(SPECIAL_TOKENS)
    ids = tok.ids
    config = {
        "architectures": ["DotsOCRForCausalLM"],
        "model_type": "dots_ocr",
        "auto_map": {
            "AutoConfig": "configuration_dots.DotsOCRConfig",
            "AutoModelForCausalLM": "modeling_dots_ocr.DotsOCRForCausalLM",
        },
        "dtype": "bfloat16",
        "vocab_size": tok.vocab_size,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": LAYERS,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "tie_word_embeddings": False,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|endoftext|>"],
        "image_token_id": ids["<|imgpad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_config": {
            "embed_dim": HIDDEN,
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "num_channels": 3,
            "patch_size": PATCH,
            "spatial_merge_size": MERGE,
            "temporal_patch_size": 1,
            "rms_norm_eps": 1e-5,
            "use_bias": False,
            "post_norm": True,
            "is_causal": False,
            "initializer_range": 0.02,
        },
    }
    tensors = [
        *_vision_tensors(),
        *embedding_tensors("model.", tok.vocab_size),
        *decoder_tensors("model.", qkv_bias=True),  # Qwen2 attention has q/k/v biases
        TensorSpec("lm_head.weight", (tok.vocab_size, HIDDEN)),
    ]
    return repo_files(
        config=config,
        tokenizer=tok,
        tokenizer_config={
            "tokenizer_class": "Qwen2Tokenizer",
            "bos_token": None,
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
            "split_special_tokens": False,
            "model_max_length": 32768,
            # Qwen2VLProcessor takes its image/video tokens from these.
            "extra_special_tokens": {"image_token": "<|imgpad|>", "video_token": "<|video_pad|>"},
        },
        chat_template=CHAT_TEMPLATE,
        chat_template_file="chat_template.json",
        generation_config={
            "bos_token_id": ids["<|endoftext|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "eos_token_id": [ids["<|endoftext|>"], ids["<|endofassistant|>"]],
            "use_cache": True,
        },
        tensors=tensors,
        seed=seed,
        extra={
            **remote_code("dots_ocr", *REMOTE_CODE),
            **tok.slow_files(),
            "special_tokens_map.json": tok.special_tokens_map(eos_token="<|endoftext|>", pad_token="<|endoftext|>"),
            "preprocessor_config.json": {
                "image_processor_type": "Qwen2VLImageProcessor",
                "processor_class": "DotsVLProcessor",
                "auto_map": {"AutoProcessor": "configuration_dots.DotsVLProcessor"},
                "patch_size": PATCH,
                "temporal_patch_size": 1,
                "merge_size": MERGE,
                # CLIP statistics, as the real dots.ocr preprocessor
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                # The real file's form: min/max_pixels, no `size`.
                "min_pixels": 56 * 56,
                "max_pixels": MAX_PIXELS,
            },
        },
    )
