"""Tiny repos are faithful to the real ones: same structure as manifests/facts/*.yaml, only sizes differ.

Also the tiny manifests' serve flags equal the real manifests' (values that scale with the model
aside), and the real manifests' flags equal what the facts settled. Every difference must be in
KNOWN with its reason; a KNOWN entry that no longer occurs fails too (stale reasons hide drift).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appliance.manifest import Catalog
from appliance.testing.fidelity import differences, load_facts
from appliance.testing.tiny import generate
from tests.conftest import REPO

FACTS = sorted((REPO / "manifests" / "facts").glob("*.yaml"))
_TOKENIZER_MODEL = "PaddleX's local backend reads the sentencepiece tokenizer.model; transformers 5 and vLLM load tokenizer.json, the tiny repo's only tokenizer"  # noqa: E501
_V15_TEMPLATE = "the tiny repo stands for PaddleOCR-VL-0.9B, whose generation prompt ends 'Assistant: '; 1.5/1.6 end it with a newline (preflight renders the real template in the built image)"  # noqa: E501
_FP8 = "FP8 block quantisation is a weight format of the real checkpoint; the tiny one is bf16 (vLLM's CPU backend here serves no FP8 block-quantised weights)"  # noqa: E501
_UNTIED = "Qwen3-VL ties the embeddings up to 4B and unties them at 8B; the tiny one follows the small models"
KNOWN: dict[str, dict[str, str]] = {
    "paddleocr-vl": {"files: tokenizer.model missing": _TOKENIZER_MODEL},
    "paddleocr-vl-1-5": {
        "files: tokenizer.model missing": _TOKENIZER_MODEL,
        "chat_template: renders": _V15_TEMPLATE,
    },
    "paddleocr-vl-1-6": {
        "files: tokenizer.model missing": _TOKENIZER_MODEL,
        "chat_template: renders": _V15_TEMPLATE,
    },
    "qwen3-vl-2b-fp8": {"config: quantization_config": _FP8},
    "qwen3-vl-4b-fp8": {"config: quantization_config": _FP8},
    "qwen3-vl-8b": {"config: tie_word_embeddings": _UNTIED, "weights: lm_head absent": _UNTIED},
    "qwen3-vl-8b-fp8": {
        "config: quantization_config": _FP8,
        "config: tie_word_embeddings": _UNTIED,
        "weights: lm_head absent": _UNTIED,
    },
}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    for arch in ("paddleocr-vl", "dots-ocr", "qwen3-vl"):
        generate(arch, root / f"tiny-{arch}")
    return root


def _diffs(facts_path: Path, tiny_dir: Path) -> list[str]:
    catalog = Catalog(REPO / "manifests")
    facts = load_facts(facts_path)
    real, tiny = catalog.model(facts["model"]), catalog.model(facts["tiny"])
    assert real.serve is not None and tiny.serve is not None and real.engine == tiny.engine
    return differences(facts, real.engine, tiny_dir, real.serve, tiny.serve)


def test_every_real_served_model_has_facts() -> None:
    catalog = Catalog(REPO / "manifests")
    served = {n for n in catalog.model_names() if catalog.model(n).serve and not n.startswith("tiny-")}
    assert {p.stem for p in FACTS} == served


@pytest.mark.parametrize("facts_path", FACTS, ids=[p.stem for p in FACTS])
def test_tiny_repo_is_faithful_to_the_real_one(facts_path: Path, tiny_root: Path) -> None:
    facts = load_facts(facts_path)
    assert facts["model"] == facts_path.stem
    assert all("source" in v for v in facts.values() if isinstance(v, dict)), "every fact names its source"
    found = _diffs(facts_path, tiny_root / facts["tiny"])
    known = KNOWN.get(facts["model"], {})
    unexplained = [d for d in found if not any(d.startswith(k) for k in known)]
    stale = [k for k in known if not any(d.startswith(k) for d in found)]
    assert not unexplained, "\n".join(unexplained)
    assert not stale, f"KNOWN differences that no longer occur: {stale}"


@pytest.mark.parametrize(
    ("arch", "facts", "breakage", "expected"),
    [
        ("dots-ocr", "dots-ocr", "processor_auto_map", "processor: preprocessor_config.json auto_map"),
        ("dots-ocr", "dots-ocr", "no_register", "remote_code: configuration_dots.py registers"),
        ("dots-ocr", "dots-ocr", "template_form", "chat_template: files"),
        ("paddleocr-vl", "paddleocr-vl", "tied", "config: tie_word_embeddings"),
        ("paddleocr-vl", "paddleocr-vl", "size_keys", "processor: preprocessor_config.json pixel keys"),
        ("qwen3-vl", "qwen3-vl-4b", "token", "tokens: image_token_id"),
        ("paddleocr-vl", "paddleocr-vl", "layout_json", "layout: PP-DocLayoutV2/inference.json extra"),
    ],
)
def test_each_check_catches_an_unfaithful_repo(
    arch: str, facts: str, breakage: str, expected: str, tiny_root: Path, tmp_path: Path
) -> None:
    import json

    repo = tmp_path / f"tiny-{arch}"
    shutil.copytree(tiny_root / f"tiny-{arch}", repo)

    def edit(name: str, change: object) -> None:
        data = json.loads((repo / name).read_text())
        change(data)  # type: ignore[operator]
        (repo / name).write_text(json.dumps(data))

    if breakage == "processor_auto_map":
        edit("preprocessor_config.json", lambda d: d.pop("auto_map"))
    elif breakage == "no_register":
        path = repo / "configuration_dots.py"
        path.write_text(path.read_text().replace('AutoProcessor.register("dots_ocr", DotsVLProcessor)', ""))
    elif breakage == "template_form":
        template = json.loads((repo / "chat_template.json").read_text())["chat_template"]
        (repo / "chat_template.json").unlink()
        (repo / "chat_template.jinja").write_text(template)
    elif breakage == "tied":
        edit("config.json", lambda d: d.update(tie_word_embeddings=True))
    elif breakage == "size_keys":
        edit("preprocessor_config.json", lambda d: d.update(size={"shortest_edge": 1, "longest_edge": 2}))
    elif breakage == "layout_json":  # what a fresh paddle.jit.save writes: PaddleX would load it instead
        (repo / "PP-DocLayoutV2" / "inference.json").write_text("{}")
    elif breakage == "token":
        edit("config.json", lambda d: d.update(image_token_id=d["video_token_id"]))
    found = _diffs(REPO / "manifests" / "facts" / f"{facts}.yaml", repo)
    assert any(d.startswith(expected) for d in found), found


def test_serve_flags_must_match_the_real_manifest(tiny_root: Path) -> None:
    catalog = Catalog(REPO / "manifests")
    facts = load_facts(REPO / "manifests" / "facts" / "dots-ocr.yaml")
    real, tiny = catalog.model("dots-ocr").serve, catalog.model("tiny-dots-ocr").serve
    assert real is not None and tiny is not None
    dropped = tiny.model_copy(update={"mm_processor_kwargs": None, "trust_remote_code": False})
    found = differences(facts, "dots-ocr", tiny_root / "tiny-dots-ocr", real, dropped)
    assert any(d.startswith("serve: trust_remote_code") for d in found), found
    assert any(d.startswith("serve: mm_processor_kwargs") for d in found), found
