"""Helpers of the supply-chain tests: synthetic Dockerfile.offline-shaped archives whose layers hold
Python distributions and a dpkg status, and signed bundles of them."""

from __future__ import annotations

import hashlib
from pathlib import Path

from appliance.image.bundle import SaveResult, write_bundle, write_release
from appliance.manifest import Catalog
from tests.image_support import layer_tar, offline_archive

REF = "localhost/ocr-appliance:tiny-cpu"
MODELS = ["tiny-paddleocr-vl", "tiny-dots-ocr", "tiny-qwen3-vl"]
SITE = "opt/vllm/lib/python3.11/site-packages"
VENV = "opt/appliance/venv/lib/python3.11/site-packages"
DPKG = b"""Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9+deb12u10
Description: GNU C Library
 multi-line description

Package: removed-pkg
Status: deinstall ok config-files
Version: 1.0

Package: python3
Status: install ok installed
Architecture: amd64
Version: 3.11.2-1+b1
"""


def metadata(name: str, version: str, license: str = "MIT") -> bytes:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nLicense: {license}\n\nbody\n".encode()


def base_files() -> dict[str, bytes]:
    return {
        "var/lib/dpkg/status": DPKG,
        f"{SITE}/vllm-0.33.0.dist-info/METADATA": metadata("vllm", "0.33.0", "Apache-2.0"),
        f"{SITE}/torch-2.13.0.dist-info/METADATA": metadata("torch", "2.13.0", "BSD-3-Clause"),
        f"{SITE}/gone-1.0.dist-info/METADATA": metadata("gone", "1.0"),
        "bin/sh": b"base" * 1000,
    }


def image_archive(path: Path, model_seeds: dict[str, int], code: bytes = b"code v1") -> list[bytes]:
    """A docker-archive shaped like a Dockerfile.offline image (base with a vLLM env and dpkg status,
    tini, user, one layer per model, the appliance venv, code); `gone` is deleted by a whiteout."""
    models = list(model_seeds)
    layers = [
        layer_tar(base_files()),
        layer_tar({"usr/local/bin/tini": b"tini", f"{SITE}/.wh.gone-1.0.dist-info": b""}),
        layer_tar({"etc/passwd": b"appliance:x:10001"}),
        *[
            layer_tar({f"models/{m}/model.bin": hashlib.sha256(b"%d" % seed).digest() * 2000})
            for m, seed in model_seeds.items()
        ],
        layer_tar({f"{VENV}/fastapi-0.115.0.dist-info/METADATA": metadata("fastapi", "0.115.0")}),
        layer_tar({"opt/appliance/code": code}),
    ]
    return offline_archive(path, layers, models, REF)


def signed_dist(
    dist: Path, catalog: Catalog, key: Path | None, stamp: int, seeds: dict[str, int] | None = None, code: bytes = b"c"
) -> SaveResult:
    """A bundle of a synthetic tiny-cpu image, as `appliance image save --sign KEY` writes it."""
    dist.mkdir(parents=True, exist_ok=True)
    archive = dist / "ocr-appliance-tiny-cpu.tar"
    image_archive(archive, seeds or dict.fromkeys(MODELS, 1), code)
    result = write_bundle(catalog, "tiny-cpu", archive, REF)
    write_release(result, catalog, key, stamp)
    return result
