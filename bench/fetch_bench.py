"""fetch + lock from the local mirror vs plain `snapshot_download` of the same repo from the same mirror.

The mirror runs in its own process (as a real hub would) so it does not share the GIL with either
client. Runs alternate and the median of each is compared.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import statistics
import time
from pathlib import Path


def _serve(repo_dir: Path, queue: mp.Queue, stop: mp.Event) -> None:  # type: ignore[type-arg]
    from appliance.mirror import HubMirror, repo_from_dir

    repo = repo_from_dir("bench/model", repo_dir)
    with HubMirror([repo]) as mirror:
        queue.put((mirror.url, repo.commit))
        stop.wait()


def _make_repo(root: Path) -> int:
    sizes = {"model-00001-of-00002.safetensors": 400 << 20, "model-00002-of-00002.safetensors": 300 << 20}
    sizes |= {"tokenizer.json": 11 << 20, "config.json": 4 << 10, "preprocessor_config.json": 1 << 10}
    root.mkdir(parents=True)
    for name, size in sizes.items():
        (root / name).write_bytes(os.urandom(size))
    return sum(sizes.values())


def run(work: Path) -> None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    from appliance.manifest import ModelManifest
    from appliance.store.fetch import FetchOptions, fetch_model

    disable_progress_bars()
    total = _make_repo(work / "repo")
    queue: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    stop = mp.Event()
    server = mp.Process(target=_serve, args=(work / "repo", queue, stop), daemon=True)
    server.start()
    try:
        url, commit = queue.get(timeout=60)
        os.environ["HF_ENDPOINT"] = url
        manifest = ModelManifest.model_validate(
            {
                "name": "bench",
                "engine": "paddle-layout",
                "source": "hf:bench/model",
                "revision": commit,
                "resources": {"weight_bytes": 1},
            }
        )
        plain, ours = [], []
        for i in range(3):
            target = work / f"plain-{i}"
            started = time.perf_counter()
            snapshot_download("bench/model", revision=commit, local_dir=target, endpoint=url)
            plain.append(time.perf_counter() - started)
            shutil.rmtree(target)

            store = work / f"store-{i}"
            started = time.perf_counter()
            report = fetch_model(manifest, work / f"lock-{i}.json", store, FetchOptions())
            ours.append(time.perf_counter() - started)
            assert report.lock_written and report.downloaded_bytes == total
            shutil.rmtree(store)
        t_plain, t_ours = statistics.median(plain), statistics.median(ours)
        print(f"repo of 5 files, {total / 1e9:.2f} GB, served from a separate process on 127.0.0.1")
        print(f"  snapshot_download      {t_plain:6.2f} s  ({total / t_plain / 1e9:.2f} GB/s)")
        print(f"  appliance fetch + lock {t_ours:6.2f} s  ({total / t_ours / 1e9:.2f} GB/s)")
        print(f"  ratio                  {t_ours / t_plain:6.2f}x   (target <= 1.15x)")
    finally:
        stop.set()
        server.join(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
