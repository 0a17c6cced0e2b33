"""Store benchmarks: `verify --deep` vs sha256sum; fetch + lock vs plain snapshot_download."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from appliance.manifest import ModelManifest
from appliance.store.hashing import sha256_file
from appliance.store.lock import Lock, LockedFile
from appliance.store.verify import verify_deep, verify_fast


def _timed(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of `repeat` runs (after the caller warmed the page cache)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _random_file(path: Path, size: int) -> None:
    block = 64 << 20
    with open(path, "wb") as handle:
        left = size
        while left:
            n = min(block, left)
            handle.write(os.urandom(n))
            left -= n


def _scratch(workdir: Path | None) -> Path:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="bench-", dir=workdir))


def _manifest(name: str) -> ModelManifest:
    return ModelManifest.model_validate(
        {"name": name, "engine": "paddle-layout", "source": f"dir:/{name}", "resources": {"weight_bytes": 1}}
    )


def bench_verify(workdir: Path | None = None) -> None:
    """verify --deep (parallel hashlib) vs `sha256sum` over the same files, page cache warm for both."""
    root = _scratch(workdir)
    try:
        store = root / "m"
        store.mkdir()
        sizes = [512 << 20, 512 << 20, 384 << 20, 384 << 20, 256 << 20, 128 << 20]  # 2.1 GB, like a model
        for index, size in enumerate(sizes):
            _random_file(store / f"model-{index:05d}.safetensors", size)
        files = sorted(store.iterdir())
        lock = Lock.create(
            _manifest("m"),
            "0" * 40,
            [LockedFile(path=p.name, size=p.stat().st_size, sha256=sha256_file(p)) for p in files],
        )
        total = sum(sizes)
        subprocess.run(["sha256sum", *map(str, files)], check=True, capture_output=True)  # warm-up

        def ours() -> None:
            assert verify_deep(store, lock) == []

        def coreutils() -> None:
            subprocess.run(["sha256sum", *map(str, files)], check=True, capture_output=True)

        t_ours, t_sum = _timed(ours, 3), _timed(coreutils, 3)
        print(f"store of {len(files)} files, {total / 1e9:.2f} GB, {os.cpu_count()} cores")
        print(f"  verify --deep  {t_ours:6.2f} s  ({total / t_ours / 1e9:.2f} GB/s)")
        print(f"  sha256sum      {t_sum:6.2f} s  ({total / t_sum / 1e9:.2f} GB/s)")
        print(f"  speed-up       {t_sum / t_ours:6.2f}x   (target >= 1.8x)")

        big = files[0]
        one = Lock.create(_manifest("one"), "0" * 40, [f for f in lock.files if f.path == big.name])
        single = root / "one"
        single.mkdir()
        os.link(big, single / big.name)
        t_ours1 = _timed(lambda: verify_deep(single, one), 3)
        t_sum1 = _timed(lambda: subprocess.run(["sha256sum", str(big)], check=True, capture_output=True), 3)
        print(f"single file of {big.stat().st_size / 1e9:.2f} GB")
        print(f"  verify --deep  {t_ours1:6.2f} s;  sha256sum {t_sum1:6.2f} s")
        print(f"  speed-up       {t_sum1 / t_ours1:6.2f}x   (target >= 0.95x)")
        _bench_fast(root)
    finally:
        shutil.rmtree(root)


def _bench_fast(root: Path) -> None:
    """verify --fast on a 20 GB store: sparse files, since --fast reads no content, only the tree."""
    store = root / "big"
    (store / "PP-DocLayoutV2").mkdir(parents=True)
    files = [f"model-{i:05d}-of-00020.safetensors" for i in range(20)]
    files += [f"PP-DocLayoutV2/part-{i}.bin" for i in range(200)] + ["config.json", "tokenizer.json"]
    locked = []
    for rel in files:
        size = 1_000_000_000 if rel.startswith("model-") else 4096
        with open(store / rel, "wb") as handle:
            handle.truncate(size)
        locked.append(LockedFile(path=rel, size=size, sha256="0" * 64))
    lock = Lock.create(_manifest("big"), "0" * 40, locked)
    started = time.perf_counter()
    for _ in range(10):
        assert verify_fast(store, lock) == []
    elapsed = (time.perf_counter() - started) / 10
    print(f"verify --fast on a {lock.total_size / 1e9:.0f} GB store of {len(files)} files: {elapsed * 1000:.1f} ms")


def bench_fetch(workdir: Path | None = None) -> None:
    from bench.fetch_bench import run

    run(_scratch(workdir))
