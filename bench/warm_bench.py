"""Baked compile caches, measured side by side in one run: the warmed tiny-cpu image
(`appliance image warm`, as `make offline-image` leaves it) vs the same image cold (`<ref>-cold`,
the image before its cache layers), each booted as the air-gap proof boots it (buildah run,
loopback only, no strace), from container start to /readyz 200 with every engine ready;
alternating cold/warm, ROUNDS each. Then, in one warm boot, one model's `supervisorctl restart`
to /readyz 200 again. Also the bytes each model's cache layer adds. Target: warm <= 0.6x cold.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from appliance.image.archive import cache_layers
from appliance.image.builder import inspect_layers
from appliance.image.layout import VENV
from appliance.image.proof import ImageBoot, cache_report
from appliance.image.warm import cold_ref, image_warm_models
from appliance.manifest import Catalog
from appliance.runtime.served import served_models
from appliance.testing.stack import CHECKOUT

REF = os.environ.get("WARM_BENCH_IMAGE", "localhost/ocr-appliance:tiny-cpu")  # a warmed image
ROUNDS = 3
TIMEOUT = 900.0


def _descendants(pid: int) -> dict[int, str]:
    """pid → command line of every process under `pid`."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                found[child] = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            todo.append(child)
    return found


def restart_to_ready(boot: ImageBoot, model: str) -> float:
    """`supervisorctl restart MODEL` inside the booted container (its mount and network namespaces),
    then seconds until /readyz is 200 again."""
    assert boot.proc is not None
    processes = _descendants(boot.proc.pid).items()
    supervisord = next(pid for pid, cmd in processes if "supervisor.supervisord" in cmd)
    started = time.monotonic()
    ctl = [f"{VENV}/bin/supervisorctl", "restart", model]
    subprocess.run(
        ["nsenter", "-t", str(supervisord), "-m", "-n", "-r", "-w", "--", *ctl], check=True, capture_output=True
    )
    boot.wait_ready(TIMEOUT, poll=0.5)
    return time.monotonic() - started


def run(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(CHECKOUT / "manifests")
    profile = catalog.profile("tiny-cpu")
    warmed = image_warm_models(REF)
    if not warmed:
        raise SystemExit(f"{REF} carries no compile caches: run `make offline-image` (or appliance image warm) first")
    _, layers = inspect_layers(REF)
    bundle = CHECKOUT / "dist" / "bundle.json"  # `make offline-image`'s save: the layer tars' sizes
    saved = json.loads(bundle.read_text())["models"] if bundle.is_file() else {}
    for model, layer in cache_layers(layers).items():
        size = (
            saved.get(model, {}).get("cache_layer_size")
            if saved.get(model, {}).get("cache_layer") == layer.diff_id
            else None
        )
        print(
            f"  {model}: cache layer {layer.diff_id[:19]}, {size if size is not None else '?'} bytes in the image tar"
        )
    times: dict[str, list[float]] = {"cold": [], "warm": []}
    for index in range(ROUNDS):
        for kind, ref in (("cold", cold_ref(REF)), ("warm", REF)):
            with ImageBoot(ref, work / f"{kind}-{index}", profile, trace=False) as boot:
                seconds = boot.wait_ready(TIMEOUT, poll=0.5)
                uses = cache_report(boot.log.read_text(errors="replace"), warmed)
            times[kind].append(seconds)
            graphs = ", ".join(f"{m}: {len(u.loads)} loaded/{len(u.compiles)} compiled" for m, u in uses.items())
            print(f"  round {index + 1} {kind}: ready after {seconds:.1f} s ({graphs})", flush=True)
    model = served_models(catalog, profile)[-1].name
    with ImageBoot(REF, work / "restart", profile, trace=False) as boot:
        boot.wait_ready(TIMEOUT, poll=0.5)
        restart = restart_to_ready(boot, model)
    cold, warm = statistics.median(times["cold"]), statistics.median(times["warm"])
    verdict = "within" if warm <= 0.6 * cold else "OUTSIDE"
    print(f"cold image to ready  median {cold:6.1f} s  {', '.join(f'{t:.1f}' for t in times['cold'])}")
    print(f"warm image to ready  median {warm:6.1f} s  {', '.join(f'{t:.1f}' for t in times['warm'])}")
    print(f"ratio warm/cold      {warm / cold:6.2f}x  (target <= 0.6x: {verdict})")
    print(f"warm image: supervisorctl restart {model} → /readyz 200 in {restart:.1f} s")


if __name__ == "__main__":
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="warm-bench-") as tmp:
        run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp))
