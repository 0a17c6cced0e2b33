"""Pieces shared by the three architectures: sizes, decoder tensor names, repo assembly."""

from __future__ import annotations

import json
from typing import Any

from appliance.testing.tiny._files import dump_json
from appliance.testing.tiny._tokenizer import tokenizer_json, vocab_size
from appliance.testing.tiny._weights import TensorSpec, safetensors_bytes

# Every tiny model uses these sizes: head_dim 64 with 2 heads keeps rotary sections realistic while
# the whole checkpoint stays at a few MB.
HIDDEN = 128
INTERMEDIATE = 256
LAYERS = 2
HEADS = 2
KV_HEADS = 1
HEAD_DIM = 64
# Processors resize images to at most this many pixels: 196-256 image tokens, far below
# max-model-len 2048, so vLLM's start-up profiling stays cheap.
MAX_PIXELS = 448 * 448

Files = dict[str, bytes]


def decoder_tensors(prefix: str, *, qk_norm: bool = False, qkv_bias: bool = False) -> list[TensorSpec]:
    """Embedding, decoder layers and final norm of a Llama-style LM under `prefix` (e.g. 'model.')."""
    specs: list[TensorSpec] = []
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    for i in range(LAYERS):
        p = f"{prefix}layers.{i}."
        for proj, out in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            specs.append(TensorSpec(f"{p}self_attn.{proj}.weight", (out, HIDDEN)))
            if qkv_bias:
                specs.append(TensorSpec(f"{p}self_attn.{proj}.bias", (out,), "zeros"))
        specs.append(TensorSpec(f"{p}self_attn.o_proj.weight", (HIDDEN, q)))
        if qk_norm:
            specs += [
                TensorSpec(f"{p}self_attn.q_norm.weight", (HEAD_DIM,), "ones"),
                TensorSpec(f"{p}self_attn.k_norm.weight", (HEAD_DIM,), "ones"),
            ]
        specs += [
            TensorSpec(f"{p}mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
            TensorSpec(f"{p}mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
            TensorSpec(f"{p}mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
            TensorSpec(f"{p}input_layernorm.weight", (HIDDEN,), "ones"),
            TensorSpec(f"{p}post_attention_layernorm.weight", (HIDDEN,), "ones"),
        ]
    return specs


def embedding_tensors(prefix: str, vocab: int) -> list[TensorSpec]:
    return [
        TensorSpec(f"{prefix}embed_tokens.weight", (vocab, HIDDEN)),
        TensorSpec(f"{prefix}norm.weight", (HIDDEN,), "ones"),
    ]


def layer_norm(name: str, dim: int) -> list[TensorSpec]:
    return [TensorSpec(f"{name}.weight", (dim,), "ones"), TensorSpec(f"{name}.bias", (dim,), "zeros")]


def linear(name: str, out_dim: int, in_dim: int, bias: bool = True) -> list[TensorSpec]:
    specs = [TensorSpec(f"{name}.weight", (out_dim, in_dim))]
    if bias:
        specs.append(TensorSpec(f"{name}.bias", (out_dim,), "zeros"))
    return specs


def remote_code(package: str, *names: str) -> Files:
    """Remote-code modules of a tiny repo, from `appliance.testing.tiny.remote_code.<package>`."""
    from importlib import resources

    root = resources.files(f"appliance.testing.tiny.remote_code.{package}")
    return {name: root.joinpath(name).read_bytes() for name in names}


class Tokenizer:
    """A trained tokenizer: its tokenizer.json text, ids of the special tokens, padded vocab size."""

    def __init__(self, special_tokens: list[str]) -> None:
        self.json, self.size = tokenizer_json(special_tokens)
        self.ids = {t: i for i, t in enumerate(special_tokens)}
        self.vocab_size = vocab_size(self.size)

    def token_id(self, token: str) -> int:
        vocab: dict[str, int] = json.loads(self.json)["model"]["vocab"]
        return vocab[token]

    def slow_files(self) -> Files:
        """vocab.json + merges.txt, the files Qwen2's slow tokenizer reads (real Qwen repos ship both)."""
        model = json.loads(self.json)["model"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        return {
            "vocab.json": (json.dumps(model["vocab"], ensure_ascii=False, sort_keys=True) + "\n").encode(),
            "merges.txt": ("#version: 0.2\n" + "".join(f"{m}\n" for m in merges)).encode(),
        }

    def special_tokens_map(self, **roles: str) -> dict[str, Any]:
        """special_tokens_map.json: the role tokens plus every added special token."""
        return {**roles, "additional_special_tokens": list(self.ids)}


def repo_files(
    *,
    config: dict[str, Any],
    tokenizer: Tokenizer,
    tokenizer_config: dict[str, Any],
    chat_template: str,
    chat_template_file: str,
    generation_config: dict[str, Any],
    tensors: list[TensorSpec],
    seed: int,
    extra: dict[str, Any] | None = None,
) -> Files:
    """The files every tiny repo has; `extra` maps further names to JSON objects or raw bytes.

    `chat_template_file` is where the real repo keeps its template: `chat_template.jinja` (read by
    transformers 5 for tokenizer and processor) or the legacy `chat_template.json` (processor only).
    """
    if chat_template_file == "chat_template.jinja":
        template = chat_template.encode()
    elif chat_template_file == "chat_template.json":
        template = dump_json({"chat_template": chat_template}).encode()
    else:
        raise ValueError(f"unknown chat template file {chat_template_file}")
    files: Files = {
        "config.json": dump_json(config).encode(),
        "generation_config.json": dump_json(generation_config).encode(),
        "tokenizer.json": tokenizer.json.encode(),
        "tokenizer_config.json": dump_json(tokenizer_config).encode(),
        chat_template_file: template,
        "model.safetensors": safetensors_bytes(tensors, seed),
    }
    for name, obj in (extra or {}).items():
        files[name] = obj if isinstance(obj, bytes) else dump_json(obj).encode()
    return files
