"""Compare a generated tiny repo with the recorded facts of the real model it stands for.

The facts (`manifests/facts/<model>.yaml`) say what the real repo is made of as far as loading goes;
a tiny repo is faithful when it has the same structure and only sizes differ. `differences` lists
every structural difference as one line ("<check>: <what>"), so a test can hold the few that size
explains (with their reasons) and fail on any other.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import yaml

from appliance.manifest import Serve

WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json")
# Serve fields whose values scale with the model (their presence must still match).
SIZED_SERVE_FIELDS = ("max_num_batched_tokens", "mm_processor_kwargs")
# Serve fields that name or type the tiny stand-in itself, not how the real model is served.
OWN_SERVE_FIELDS = ("served_model_name", "dtype")
# vLLM's image placeholder for engines served with --chat-template-content-format string
# (vllm 0.32 vllm/model_executor/models/dots_ocr.py get_placeholder_str).
STRING_FORMAT_PLACEHOLDER = {"dots-ocr": "<|img|><|imgpad|><|endofimg|>"}


def load_facts(path: Path) -> dict[str, Any]:
    facts: dict[str, Any] = yaml.safe_load(path.read_text())
    return facts


def _value(facts: dict[str, Any], key: str) -> Any:
    return facts[key]["value"]


def _json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def module_behaviour(source: str) -> tuple[set[str], set[str]]:
    """(classes defined at module level, registrations done at import) of a Python module.

    A registration is a module-level call `X.register("key", …)` → "X:key", or
    `X.register_model("Arch", …)` → "X:Arch": what transformers and vLLM registries see.
    """
    tree = ast.parse(source)
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    registers = set()
    for node in tree.body:
        call = node.value if isinstance(node, ast.Expr) else None
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
            continue
        owner = call.func.value
        first = call.args[0] if call.args else None
        if call.func.attr in ("register", "register_model") and isinstance(owner, ast.Name):
            key = first.value if isinstance(first, ast.Constant) else ast.unparse(first) if first else ""
            registers.add(f"{owner.id}:{key}")
    return classes, registers


def _files(facts: dict[str, Any], tiny: Path) -> list[str]:
    real = set(_value(facts, "files"))
    ours = {p.name for p in tiny.iterdir() if p.is_file() and not p.name.endswith(WEIGHT_SUFFIXES)}
    return [f"files: {n} missing" for n in sorted(real - ours)] + [f"files: {n} extra" for n in sorted(ours - real)]


def _layout(facts: dict[str, Any], tiny: Path) -> list[str]:
    """The layout model's sub-folder, same files: PaddleX takes `inference.json` over `.pdmodel`, so
    the format decides which loader runs."""
    layout = facts.get("layout_model", {}).get("value") or {}
    if "subdir" not in layout:
        return []
    real = set(layout["files"])
    folder = tiny / layout["subdir"]
    ours = {p.name for p in folder.iterdir() if p.is_file()} if folder.is_dir() else set()
    where = f"layout: {layout['subdir']}/"
    return [f"{where}{n} missing" for n in sorted(real - ours)] + [f"{where}{n} extra" for n in sorted(ours - real)]


def _config(facts: dict[str, Any], config: dict[str, Any]) -> list[str]:
    want = _value(facts, "config")
    text = config.get("text_config", config)
    have = {
        "architectures": config.get("architectures"),
        "model_type": config.get("model_type"),
        "auto_map": config.get("auto_map"),
        "layout": "nested" if "text_config" in config else "flat",
        "sub_configs": sorted(k for k, v in config.items() if k.endswith("_config") and isinstance(v, dict)),
        "rope_key": next((k for k in ("rope_scaling", "rope_parameters", "rope_theta") if k in text), None),
        "tie_word_embeddings": config.get("tie_word_embeddings"),
        "quantization_config": config.get("quantization_config"),
    }
    return [f"config: {key} is {have[key]!r}, real {want.get(key)!r}" for key in have if have[key] != want.get(key)]


def _tokens(facts: dict[str, Any], config: dict[str, Any], tiny: Path) -> list[str]:
    vocab = {t["id"]: t["content"] for t in _json(tiny / "tokenizer.json")["added_tokens"]}
    vocab |= {i: t for t, i in _json(tiny / "tokenizer.json")["model"]["vocab"].items() if i not in vocab}
    text = config.get("text_config", {})
    out = []
    for key, token in _value(facts, "tokens").items():
        token_id = config.get(key, text.get(key))
        if vocab.get(token_id) != token:
            out.append(f"tokens: {key} names {vocab.get(token_id)!r}, real {token!r}")
    return out


def _processor(facts: dict[str, Any], tiny: Path) -> list[str]:
    out = []
    for name, want in _value(facts, "processor").items():
        if not (tiny / name).is_file():
            out.append(f"processor: {name} missing")
            continue
        have = _json(tiny / name)
        for key, value in want.items():
            if key == "pixel_keys":
                ours = sorted(k for k in ("min_pixels", "max_pixels", "size") if k in have)
                if ours != sorted(value):
                    out.append(f"processor: {name} pixel keys {ours}, real {sorted(value)}")
            elif have.get(key) != value:
                out.append(f"processor: {name} {key} is {have.get(key)!r}, real {value!r}")
    return out


def _chat_template(facts: dict[str, Any], engine: str, serve: Serve, tiny: Path) -> list[str]:
    """Where the template lives, and the prompt it renders for one image + text user turn."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    want = _value(facts, "chat_template")
    out = []
    present = sorted(p.name for p in tiny.glob("chat_template.*"))
    if present != [want["file"]]:
        return [f"chat_template: files {present}, real [{want['file']!r}]"]
    raw = (tiny / want["file"]).read_text()
    template = _json(tiny / want["file"])["chat_template"] if want["file"].endswith(".json") else raw
    text = "Read all the text in the image."
    if serve.chat_template_content_format == "string":
        content: Any = STRING_FORMAT_PLACEHOLDER[engine] + "\n" + text
    else:
        content = [{"type": "image"}, {"type": "text", "text": text}]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    prompt = env.from_string(template).render(
        messages=[{"role": "user", "content": content}], add_generation_prompt=True
    )
    if prompt != want["prompt"].format(text=text):
        out.append(f"chat_template: renders {prompt!r}, real {want['prompt'].format(text=text)!r}")
    return out


def _remote_code(facts: dict[str, Any], tiny: Path, auto_maps: list[dict[str, str]]) -> list[str]:
    want = _value(facts, "remote_code")
    out = []
    ours = sorted(p.name for p in tiny.glob("*.py"))
    if ours != sorted(want):
        out.append(f"remote_code: modules {ours}, real {sorted(want)}")
    for module, behaviour in want.items():
        if not (tiny / module).is_file():
            continue
        classes, registers = module_behaviour((tiny / module).read_text())
        if classes != set(behaviour["defines"]):
            out.append(f"remote_code: {module} defines {sorted(classes)}, real {sorted(behaviour['defines'])}")
        if registers != set(behaviour["registers"]):
            out.append(f"remote_code: {module} registers {sorted(registers)}, real {sorted(behaviour['registers'])}")
    for auto_map in auto_maps:
        for target in auto_map.values():
            module, _, cls = target.rpartition(".")
            path = tiny / f"{module}.py"
            if not path.is_file() or cls not in module_behaviour(path.read_text())[0]:
                out.append(f"remote_code: auto_map target {target} not defined")
    return out


def _weights(facts: dict[str, Any], tiny: Path) -> list[str]:
    header_len = int.from_bytes((tiny / "model.safetensors").read_bytes()[:8], "little")
    with (tiny / "model.safetensors").open("rb") as f:
        f.seek(8)
        names = set(json.loads(f.read(header_len)))
    has_head = "lm_head.weight" in names
    real = _value(facts, "weights")["lm_head"]
    return [] if has_head == real else [f"weights: lm_head {'present' if has_head else 'absent'}, real {real}"]


def _serve(facts: dict[str, Any], real: Serve, tiny: Serve) -> list[str]:
    out = []
    for field in Serve.model_fields:
        ours, theirs = getattr(tiny, field), getattr(real, field)
        if field in OWN_SERVE_FIELDS:
            continue
        if field in SIZED_SERVE_FIELDS:
            same = (ours is None) == (theirs is None) and (
                not isinstance(ours, dict) or not isinstance(theirs, dict) or set(ours) == set(theirs)
            )
        else:
            same = ours == theirs
        if not same:
            out.append(f"serve: {field} is {ours!r}, real {theirs!r}")
    settled = _value(facts, "vllm")
    if real.trust_remote_code != settled["trust_remote_code"]:
        out.append(f"serve: real manifest trust_remote_code {real.trust_remote_code}, facts say {settled}")
    if real.hf_overrides != settled["hf_overrides"]:
        out.append(f"serve: real manifest hf_overrides {real.hf_overrides}, facts say {settled['hf_overrides']}")
    return out


def differences(facts: dict[str, Any], engine: str, tiny: Path, real_serve: Serve, tiny_serve: Serve) -> list[str]:
    """Every structural difference between the tiny repo `tiny` and the real repo's facts."""
    config = _json(tiny / "config.json")
    auto_maps = [config.get("auto_map") or {}]
    for name in _value(facts, "processor"):
        if (tiny / name).is_file():
            auto_maps.append(_json(tiny / name).get("auto_map") or {})
    return [
        *_files(facts, tiny),
        *_layout(facts, tiny),
        *_config(facts, config),
        *_tokens(facts, config, tiny),
        *_processor(facts, tiny),
        *_chat_template(facts, engine, tiny_serve, tiny),
        *_remote_code(facts, tiny, auto_maps),
        *_weights(facts, tiny),
        *_serve(facts, real_serve, tiny_serve),
    ]
