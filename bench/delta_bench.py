"""Delta bundles, measured side by side in one run (DESIGN §4; issue 13):

1. bytes: a one-model update shipped as a delta (`image save --since`) vs the full tar
   (target: <= the model's bytes + 1 MB);
2. time on the isolated host: `bundle apply` (rebuild the tar from the old bundle + the delta, every
   layer and the whole file hashed, fsync, rename) vs copying the full tar (`cp` + `sync`, what
   carrying a full bundle in costs at the least), and the signed `bundle verify` of the full tar.

Archives: Dockerfile.offline-shaped docker-archives written here (base layer BASE_MB, three model
layers of MODEL_MB each, the venv, the code), with the real bundle.json / SBOM / signed manifest of
the tiny-cpu profile; sizes from $BENCH_DELTA_BASE_MB / $BENCH_DELTA_MODEL_MB.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from appliance.image import bundle, signing
from appliance.image.delta import LAYERS_DIR, apply, make_delta
from appliance.manifest import Catalog
from tests.conftest import REPO

MODELS = ["tiny-paddleocr-vl", "tiny-dots-ocr", "tiny-qwen3-vl"]
REF = "localhost/ocr-appliance:tiny-cpu"
MB = 1_000_000


def _layer(path: Path, name: str, size: int, seed: int) -> str:
    """A layer tar holding one file of `size` pseudo-random bytes; returns its diff id."""
    data = path.with_suffix(".data")
    block = hashlib.sha256(b"%d" % seed).digest() * (1 << 15)  # 1 MiB, differs per seed
    with open(data, "wb") as handle:
        left = size
        while left > 0:
            handle.write(block[: min(left, len(block))])
            left -= len(block)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(data, arcname=name)
    data.unlink()
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
    return f"sha256:{sha.hexdigest()}"


def _archive(work: Path, out: Path, seeds: dict[str, int], base_mb: int, model_mb: int) -> None:
    parts = work / f"parts-{out.stem}"
    parts.mkdir(parents=True, exist_ok=True)
    specs = [("base", "bin/base", base_mb * MB, 0), ("tini", "usr/local/bin/tini", 30_000, 1),
             ("user", "etc/passwd", 100, 2)]  # fmt: skip
    specs += [(m, f"models/{m}/model.safetensors", model_mb * MB, seed) for m, seed in seeds.items()]
    specs += [("deps", "opt/appliance/venv/lib.so", 50 * MB, 3), ("code", "opt/appliance/code.py", MB, 4)]
    diff_ids, files = [], []
    for name, inner, size, seed in specs:
        layer = parts / f"{name}-{seed}.tar"
        cached = layer.with_suffix(".id")
        if not cached.exists():
            cached.write_text(_layer(layer, inner, size, seed))
        diff_ids.append(cached.read_text())
        files.append(layer)
    history = [{"created_by": "ADD rootfs.tar /"}, {"created_by": "COPY tini /usr/local/bin/tini"},
               {"created_by": "RUN useradd appliance"}]  # fmt: skip
    history += [{"created_by": f"COPY {m} /"} for m in seeds] + [{"created_by": "COPY venv"}, {"created_by": "COPY ."}]
    image = {"Labels": {"appliance.models": ",".join(seeds)}}
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": history, "config": image})
    config = config.encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    names = [f"{d.removeprefix('sha256:')}.tar" for d in diff_ids]
    manifest = json.dumps([{"Config": config_name, "RepoTags": [REF], "Layers": names}]).encode()
    (parts / config_name).write_bytes(config)
    (parts / "manifest.json").write_bytes(manifest)
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, file in zip(names, files, strict=True):
            tar.add(file, arcname=name)
        tar.add(parts / config_name, arcname=config_name)
        tar.add(parts / "manifest.json", arcname="manifest.json")


def _dist(  # type: ignore[no-untyped-def]
    work: Path, name: str, catalog: Catalog, key: Path, stamp: int, seeds: dict[str, int], sizes: tuple[int, int]
):
    dist = work / name
    dist.mkdir(parents=True, exist_ok=True)
    archive = dist / bundle.archive_name("tiny-cpu")
    _archive(work, archive, seeds, *sizes)
    result = bundle.write_bundle(catalog, "tiny-cpu", archive, REF)
    bundle.write_release(result, catalog, key, stamp)
    return dist


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run(work: Path | None = None) -> None:
    work = Path(tempfile.mkdtemp(prefix="delta-bench-")) if work is None else work
    work.mkdir(parents=True, exist_ok=True)
    sizes = (int(os.environ.get("BENCH_DELTA_BASE_MB", "1500")), int(os.environ.get("BENCH_DELTA_MODEL_MB", "20")))
    try:
        catalog = Catalog(REPO / "manifests")
        key = signing.new_key(work / "signing.key", force=True).private
        pub = signing.public_path(key)
        v1 = dict.fromkeys(MODELS, 10)
        old = _dist(work, "old", catalog, key, 1000, v1, sizes)
        new = _dist(work, "new", catalog, key, 2000, {**v1, "tiny-dots-ocr": 11}, sizes)
        name = bundle.archive_name("tiny-cpu")
        full_bytes = (new / name).stat().st_size
        delta_dir = work / "delta"
        made = _timed(lambda: make_delta(new, old / "bundle.json", delta_dir))
        delta_bytes = sum(p.stat().st_size for p in delta_dir.rglob("*") if p.is_file())
        shipped = sum(p.stat().st_size for p in (delta_dir / LAYERS_DIR).iterdir())
        model_bytes = sizes[1] * MB
        print(f"full tar {full_bytes / MB:.1f} MB; delta {delta_bytes / MB:.2f} MB "
              f"(layers {shipped / MB:.2f} MB + recipe and side files {(delta_bytes - shipped) / 1e3:.0f} kB), "
              f"made in {made:.2f} s")  # fmt: skip
        print(f"  delta / full tar: {delta_bytes / full_bytes:.4f}x; delta - model bytes: "
              f"{(delta_bytes - model_bytes) / 1e3:.0f} kB (target <= 1000 kB: "
              f"{'met' if delta_bytes <= model_bytes + MB else 'MISSED'})")  # fmt: skip
        copies, applies, verifies = [], [], []
        # cp, then sync of the copy: apply fsyncs its result before renaming it into place
        copy = f"cp {new / name} {work / 'copy.tar'} && sync {work / 'copy.tar'}"
        for _ in range(2):  # alternate, best of two
            copies.append(_timed(lambda: subprocess.run(["bash", "-c", copy], check=True)))
            (work / "copy.tar").unlink()
            (delta_dir / name).unlink(missing_ok=True)
            applies.append(_timed(lambda: apply(old, delta_dir, pub)))
            verifies.append(_timed(lambda: bundle.verify(new, key=pub)))
        assert (delta_dir / name).read_bytes() == (new / name).read_bytes()
        cp, ap, ve = min(copies), min(applies), min(verifies)
        print(f"on the site: bundle apply {ap:.2f} s vs cp + sync of the full tar {cp:.2f} s: {ap / cp:.2f}x "
              f"(apply hashes every byte it writes); bundle verify --key of the full tar {ve:.2f} s")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
