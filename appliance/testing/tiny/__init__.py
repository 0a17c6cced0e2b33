"""Deterministic tiny, randomly initialised models of the three real OCR architectures.

Each model is a few MB of bf16 safetensors plus real tokenizer, processor, chat-template and
generation files, loadable by transformers and servable by vLLM. Output depends only on the seed
(and the trained tokenizer, which is deterministic): same seed, same bytes.
"""

from __future__ import annotations

import importlib
from pathlib import Path

ARCHITECTURES = ("qwen3-vl", "paddleocr-vl", "dots-ocr")

_MODULES = {
    "qwen3-vl": "appliance.testing.tiny.qwen3_vl",
    "paddleocr-vl": "appliance.testing.tiny.paddleocr_vl",
    "dots-ocr": "appliance.testing.tiny.dots_ocr",
}


def repo_name(arch: str) -> str:
    """Directory name of a tiny model; no dot in it (vLLM cannot serve dots.ocr from such a dir)."""
    _check(arch)
    return f"tiny-{arch}"


def generate(arch: str, out_dir: Path, seed: int = 0) -> list[Path]:
    """Write the repo files of `arch` into `out_dir`; return their sorted relative paths."""
    _check(arch)
    files: dict[str, bytes] = importlib.import_module(_MODULES[arch]).build(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return sorted(Path(name) for name in files)


def generate_all(out_root: Path, seed: int = 0) -> dict[str, Path]:
    """Generate every architecture under `out_root/tiny-<arch>`; return arch -> directory."""
    dirs: dict[str, Path] = {}
    for arch in ARCHITECTURES:
        dirs[arch] = Path(out_root) / repo_name(arch)
        generate(arch, dirs[arch], seed)
    return dirs


def _check(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
