"""Tiny Qwen3-VL (`Qwen3VLForConditionalGeneration`): the structure of Qwen/Qwen3-VL-*-Instruct.

Facts: manifests/facts/qwen3-vl-*.yaml — nested config with `rope_scaling`, the fast image
processor, the template in the legacy `chat_template.json`, vocab.json + merges.txt beside
tokenizer.json, no remote code.
"""

from __future__ import annotations

from appliance.testing.tiny._common import (
    HEAD_DIM,
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
    repo_files,
)
from appliance.testing.tiny._weights import TensorSpec

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

PATCH, MERGE, TEMPORAL = 16, 2, 2
NUM_POSITIONS = 2304  # 48 x 48 learned position grid, as the real vision tower
DEEPSTACK = [1]  # deepstack taps need a layer index below depth

CHAT_TEMPLATE = r"""{%- for message in messages %}
{{- '<|im_start|>' + message.role + '\n' }}
{%- if message.content is string %}
{{- message.content }}
{%- else %}
{%- for item in message.content %}
{%- if item.type == 'image' or item.type == 'image_url' or 'image' in item %}
{{- '<|vision_start|><|image_pad|><|vision_end|>' }}
{%- elif item.type == 'video' or 'video' in item %}
{{- '<|vision_start|><|video_pad|><|vision_end|>' }}
{%- elif item.type == 'text' %}
{{- item.text }}
{%- endif %}
{%- endfor %}
{%- endif %}
{{- '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\n' }}
{%- endif %}
"""


def _vision_tensors() -> list[TensorSpec]:
    p = "model.visual."
    merged = HIDDEN * MERGE * MERGE
    specs = [
        # Conv3d kernel: (out, in, temporal, patch, patch).
        TensorSpec(f"{p}patch_embed.proj.weight", (HIDDEN, 3, TEMPORAL, PATCH, PATCH)),
        TensorSpec(f"{p}patch_embed.proj.bias", (HIDDEN,), "zeros"),
        TensorSpec(f"{p}pos_embed.weight", (NUM_POSITIONS, HIDDEN)),
    ]
    for i in range(LAYERS):
        b = f"{p}blocks.{i}."
        specs += [
            *layer_norm(f"{b}norm1", HIDDEN),
            *layer_norm(f"{b}norm2", HIDDEN),
            *linear(f"{b}attn.qkv", 3 * HIDDEN, HIDDEN),
            *linear(f"{b}attn.proj", HIDDEN, HIDDEN),
            *linear(f"{b}mlp.linear_fc1", INTERMEDIATE, HIDDEN),
            *linear(f"{b}mlp.linear_fc2", HIDDEN, INTERMEDIATE),
        ]
    # The main merger normalises before merging 2x2 patches; deepstack mergers after.
    specs += [
        *layer_norm(f"{p}merger.norm", HIDDEN),
        *linear(f"{p}merger.linear_fc1", merged, merged),
        *linear(f"{p}merger.linear_fc2", HIDDEN, merged),
    ]
    for i in range(len(DEEPSTACK)):
        m = f"{p}deepstack_merger_list.{i}."
        specs += [
            *layer_norm(f"{m}norm", merged),
            *linear(f"{m}linear_fc1", merged, merged),
            *linear(f"{m}linear_fc2", HIDDEN, merged),
        ]
    return specs


def build(seed: int) -> Files:
    tok = Tokenizer(SPECIAL_TOKENS)
    ids = tok.ids
    text_config = {
        "model_type": "qwen3_vl_text",
        "vocab_size": tok.vocab_size,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "tie_word_embeddings": True,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "dtype": "bfloat16",
        # Interleaved multimodal rope in the real config's form; sections sum to head_dim / 2.
        "rope_theta": 5000000.0,
        "rope_scaling": {"mrope_interleaved": True, "mrope_section": [12, 10, 10], "rope_type": "default"},
    }
    vision_config = {
        "model_type": "qwen3_vl",
        "depth": LAYERS,
        "hidden_size": HIDDEN,
        "hidden_act": "gelu_pytorch_tanh",
        "intermediate_size": INTERMEDIATE,
        "num_heads": HEADS,
        "in_channels": 3,
        "patch_size": PATCH,
        "spatial_merge_size": MERGE,
        "temporal_patch_size": TEMPORAL,
        "out_hidden_size": HIDDEN,
        "num_position_embeddings": NUM_POSITIONS,
        "deepstack_visual_indexes": DEEPSTACK,
        "initializer_range": 0.02,
    }
    config = {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "dtype": "bfloat16",
        "tie_word_embeddings": True,
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "text_config": text_config,
        "vision_config": vision_config,
    }
    vision_proc = {
        "patch_size": PATCH,
        "temporal_patch_size": TEMPORAL,
        "merge_size": MERGE,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "processor_class": "Qwen3VLProcessor",
    }
    tensors = [
        *_vision_tensors(),
        *embedding_tensors("model.language_model.", tok.vocab_size),
        *decoder_tensors("model.language_model.", qk_norm=True),
    ]  # lm_head is tied to embed_tokens, so the checkpoint has none
    return repo_files(
        config=config,
        tokenizer=tok,
        tokenizer_config={
            "tokenizer_class": "Qwen2Tokenizer",
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
            "split_special_tokens": False,
            "model_max_length": 32768,
            "extra_special_tokens": {
                "image_token": "<|image_pad|>",
                "video_token": "<|video_pad|>",
                "vision_bos_token": "<|vision_start|>",
                "vision_eos_token": "<|vision_end|>",
            },
        },
        chat_template=CHAT_TEMPLATE,
        chat_template_file="chat_template.json",
        generation_config={
            "bos_token_id": ids["<|endoftext|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
            "do_sample": True,
            "temperature": 0.7,
            "top_k": 20,
            "top_p": 0.8,
            "repetition_penalty": 1.0,
        },
        tensors=tensors,
        seed=seed,
        extra={
            **tok.slow_files(),
            "preprocessor_config.json": {
                **vision_proc,
                "image_processor_type": "Qwen2VLImageProcessorFast",
                "size": {"shortest_edge": 64 * 64, "longest_edge": MAX_PIXELS},
            },
            "video_preprocessor_config.json": {
                **vision_proc,
                "video_processor_type": "Qwen3VLVideoProcessor",
                "size": {"shortest_edge": 64 * 64, "longest_edge": MAX_PIXELS * 4},
                "fps": 2,
                "min_frames": 4,
                "max_frames": 8,
            },
        },
    )
