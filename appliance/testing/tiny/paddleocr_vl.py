"""Tiny PaddleOCR-VL: the structure of PaddlePaddle/PaddleOCR-VL (manifests/facts/paddleocr-vl.yaml).

Same files (remote-code modules named by `auto_map` included), the flat config with `rope_scaling`
and `tie_word_embeddings: false`, a preprocessor config with `min_pixels`/`max_pixels` and
`auto_map`, the template in `chat_template.jinja`. Served without remote code: transformers 5 has
the architecture natively. The checkpoint keeps the hub's key names (`visual.`, `mlp_AR.`,
`model.`, `lm_head.`), which transformers' conversion mapping and vLLM's weight mapper expect.

Its `lm_head` differs from the embedding (a "marker" head, see `_weights.TensorSpec`): greedy
output made only of MARKER_TOKENS proves the server used the checkpoint's head, not the embedding
that a `tie_word_embeddings: true` config would tie in its place.

Its layout model sits where the real repo keeps it, `PP-DocLayoutV2/` (appliance/testing/tiny/layout.py).
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
    remote_code,
    repo_files,
)
from appliance.testing.tiny._weights import TensorSpec
from appliance.testing.tiny.layout import SUBDIR as LAYOUT_SUBDIR
from appliance.testing.tiny.layout import build_files as layout_files

SPECIAL_TOKENS = [
    "<unk>",
    "<s>",
    "</s>",
    "<|begin_of_sentence|>",
    "<|end_of_sentence|>",
    "<|IMAGE_PLACEHOLDER|>",
    "<|video_pad|>",
    "<|IMAGE_START|>",
    "<|IMAGE_END|>",
    "<|VIDEO_START|>",
    "<|VIDEO_END|>",
]

PATCH, MERGE = 14, 2
MARKER_TOKENS = ("A", "B")  # the only tokens the marker lm_head lets greedy decoding pick
REMOTE_CODE = (
    "configuration_paddleocr_vl.py",
    "image_processing_paddleocr_vl.py",
    "modeling_paddleocr_vl.py",
    "processing_paddleocr_vl.py",
)
AUTO_MAP = {
    "AutoConfig": "configuration_paddleocr_vl.PaddleOCRVLConfig",
    "AutoModel": "modeling_paddleocr_vl.PaddleOCRVLForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_paddleocr_vl.PaddleOCRVLForConditionalGeneration",
}
IMAGE_SIZE = 384  # SigLIP position grid 27 x 27, interpolated for other sizes

CHAT_TEMPLATE = r"""{{- '<|begin_of_sentence|>' }}
{%- for message in messages %}
{%- if message.role == 'user' %}
{{- 'User: ' }}
{%- elif message.role == 'assistant' %}
{{- 'Assistant: ' }}
{%- endif %}
{%- if message.content is string %}
{{- message.content }}
{%- else %}
{%- for item in message.content %}
{%- if item.type == 'image' or item.type == 'image_url' or 'image' in item %}
{{- '<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>' }}
{%- elif item.type == 'text' %}
{{- item.text }}
{%- endif %}
{%- endfor %}
{%- endif %}
{%- if message.role == 'assistant' %}
{{- '<|end_of_sentence|>' }}
{%- else %}
{{- '\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- 'Assistant: ' }}
{%- endif %}
"""


def _vision_tensors() -> list[TensorSpec]:
    p = "visual.vision_model."
    grid = IMAGE_SIZE // PATCH
    specs = [
        TensorSpec(f"{p}embeddings.patch_embedding.weight", (HIDDEN, 3, PATCH, PATCH)),
        TensorSpec(f"{p}embeddings.patch_embedding.bias", (HIDDEN,), "zeros"),
        TensorSpec(f"{p}embeddings.position_embedding.weight", (grid * grid, HIDDEN)),
    ]
    for i in range(LAYERS):
        b = f"{p}encoder.layers.{i}."
        specs += [
            *layer_norm(f"{b}layer_norm1", HIDDEN),
            *layer_norm(f"{b}layer_norm2", HIDDEN),
            *linear(f"{b}self_attn.q_proj", HIDDEN, HIDDEN),
            *linear(f"{b}self_attn.k_proj", HIDDEN, HIDDEN),
            *linear(f"{b}self_attn.v_proj", HIDDEN, HIDDEN),
            *linear(f"{b}self_attn.out_proj", HIDDEN, HIDDEN),
            *linear(f"{b}mlp.fc1", INTERMEDIATE, HIDDEN),
            *linear(f"{b}mlp.fc2", HIDDEN, INTERMEDIATE),
        ]
    specs += layer_norm(f"{p}post_layernorm", HIDDEN)
    # Projector: norm, then 2x2 patch merge into the LM width.
    merged = HIDDEN * MERGE * MERGE
    specs += [
        *layer_norm("mlp_AR.pre_norm", HIDDEN),
        *linear("mlp_AR.linear_1", merged, merged),
        *linear("mlp_AR.linear_2", HIDDEN, merged),
    ]
    return specs


def build(seed: int) -> Files:
    tok = Tokenizer(SPECIAL_TOKENS)
    ids = tok.ids
    # Flat like the hub's config.json: transformers moves the text keys into text_config.
    config = {
        "architectures": ["PaddleOCRVLForConditionalGeneration"],
        "model_type": "paddleocr_vl",
        "auto_map": AUTO_MAP,
        "dtype": "bfloat16",
        "vocab_size": tok.vocab_size,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
        "use_bias": False,
        "use_cache": True,
        "initializer_range": 0.02,
        # As the real config. transformers 5's native config turns it into true; the served flags
        # override it back (manifests/facts/paddleocr-vl.yaml, `vllm`).
        "tie_word_embeddings": False,
        "pad_token_id": ids["<unk>"],
        "bos_token_id": ids["<s>"],
        "eos_token_id": ids["</s>"],
        # Multimodal rope in the real config's (transformers 4) form; sections sum to head_dim / 2.
        "rope_theta": 500000.0,
        "rope_scaling": {"mrope_section": [8, 12, 12], "rope_type": "default", "type": "default"},
        "image_token_id": ids["<|IMAGE_PLACEHOLDER|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|IMAGE_START|>"],
        "vision_end_token_id": ids["<|IMAGE_END|>"],
        "vision_config": {
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "num_channels": 3,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH,
            "spatial_merge_size": MERGE,
            "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-6,
        },
    }
    marker_rows = tuple(tok.token_id(t) for t in MARKER_TOKENS)
    tensors = [
        *_vision_tensors(),
        *embedding_tensors("model.", tok.vocab_size),
        *decoder_tensors("model."),
        TensorSpec("lm_head.weight", (tok.vocab_size, HIDDEN), "marker", marker_rows),
    ]
    roles = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
             "cls_token": "<|begin_of_sentence|>", "sep_token": "<|end_of_sentence|>"}  # fmt: skip
    files = repo_files(
        config=config,
        tokenizer=tok,
        tokenizer_config={
            # transformers 5 forces the tokenizer.json backend for paddleocr_vl whatever the class says.
            "tokenizer_class": "PreTrainedTokenizerFast",
            "unk_token": "<unk>",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "pad_token": "<unk>",
            "cls_token": "<|begin_of_sentence|>",
            "sep_token": "<|end_of_sentence|>",
            "clean_up_tokenization_spaces": False,
            "split_special_tokens": False,
            "model_max_length": 32768,
            # PaddleOCRVLProcessor reads tokenizer.image_token / image_token_id.
            "extra_special_tokens": {"image_token": "<|IMAGE_PLACEHOLDER|>"},
        },
        chat_template=CHAT_TEMPLATE,
        chat_template_file="chat_template.jinja",
        generation_config={
            "pad_token_id": ids["<unk>"],
            "bos_token_id": ids["<s>"],
            "eos_token_id": ids["</s>"],
            "use_cache": True,
        },
        tensors=tensors,
        seed=seed,
        extra={
            **remote_code("paddleocr_vl", *REMOTE_CODE),
            "added_tokens.json": dict(tok.ids),
            "special_tokens_map.json": tok.special_tokens_map(**roles),
            # The remote processor's form: pixel limits as min/max_pixels, no `size`.
            "preprocessor_config.json": {
                "image_processor_type": "PaddleOCRVLImageProcessor",
                "processor_class": "PaddleOCRVLProcessor",
                "auto_map": {
                    "AutoImageProcessor": "image_processing_paddleocr_vl.PaddleOCRVLImageProcessor",
                    "AutoProcessor": "processing_paddleocr_vl.PaddleOCRVLProcessor",
                },
                "patch_size": PATCH,
                "temporal_patch_size": 1,
                "merge_size": MERGE,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
                "min_pixels": 112 * 112,
                "max_pixels": MAX_PIXELS,
            },
            "processor_config.json": {"processor_class": "PaddleOCRVLProcessor"},
        },
    )
    # The layout model does not depend on the seed: its boxes are fixed fractions of the page.
    files.update({f"{LAYOUT_SUBDIR}/{name}": data for name, data in layout_files().items()})
    return files
