"""Time to ready: the appliance (`appliance boot` → supervisord → sequencer → vLLM x3 + gateway) vs
the bare alternative — the same three `python -m vllm.entrypoints.openai.api_server` commands,
each started by hand once the previous one answers /health 200.

Both runs start cold (each its own fresh VLLM_CACHE_ROOT, so neither reuses the other's compiled
graphs) after one warm-up import of vLLM (so neither pays for a cold page cache alone), one after
the other in this one process. Target: appliance <= 1.1 x bare + 2 s.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path, PurePosixPath

from appliance import constants
from appliance.runtime.plan import plan_profile
from appliance.runtime.served import served_models
from appliance.runtime.supervisor import device_env
from appliance.runtime.vllm_args import vllm_args, vllm_command
from appliance.testing.stack import Stack
from appliance.testing.vllm_server import vllm_server

TIMEOUT = 900.0


def bare(stack: Stack, work: Path) -> float:
    """Seconds from the first server's start to the last one's /health 200, started one after another."""
    plan = plan_profile(stack.catalog, stack.profile)
    env = dict(os.environ) | constants.OFFLINE_ENV | device_env(stack.profile)
    env |= {"HF_HOME": str(work / "hf"), "VLLM_CACHE_ROOT": str(work / "vllm-cache")}
    started = time.monotonic()
    with contextlib.ExitStack() as servers:
        for served in served_models(stack.catalog, stack.profile):
            args = vllm_args(
                served.manifest, stack.profile, served.entry, plan.fraction(served.name), PurePosixPath(stack.store)
            )
            command = vllm_command(stack.vllm_python, *args)
            log = work / f"{served.name}.log"
            servers.enter_context(vllm_server(command, served.port, log, env=env, timeout=TIMEOUT))
            print(f"  bare {served.name}: healthy at {time.monotonic() - started:.1f} s", flush=True)
        return time.monotonic() - started


def appliance(stack: Stack) -> float:
    """Seconds from `appliance boot` to /readyz 200 with every model (optional ones too) ready."""
    from appliance.runtime.phases import read_history

    wall = time.time()
    started = stack.start()
    try:
        ready = stack.wait_all_ready(TIMEOUT)
        for record in read_history(stack.run_dir):
            if record.phase == "ready":
                print(f"  appliance {record.model}: ready at {record.since - wall:.1f} s", flush=True)
        return ready - started
    finally:
        stack.stop()


def run(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    stack = Stack(work / "appliance")
    print("warm-up: importing vLLM once (page cache for both runs)", flush=True)
    subprocess.run([stack.vllm_python, "-c", "import vllm.entrypoints.openai.api_server"], check=True)
    (work / "bare").mkdir(exist_ok=True)
    print("bare: three vLLM servers, each started after the previous is healthy", flush=True)
    t_bare = bare(stack, work / "bare")
    print("appliance: appliance boot → supervisord → sequencer → vLLM x3 + gateway", flush=True)
    t_app = appliance(stack)
    target = 1.1 * t_bare + 2
    verdict = "within" if t_app <= target else "OUTSIDE"
    print(f"bare sequential      {t_bare:7.1f} s")
    print(f"appliance to ready   {t_app:7.1f} s")
    print(f"ratio appliance/bare {t_app / t_bare:7.2f}x  (target <= 1.1x + 2 s = {target:.1f} s: {verdict})")


if __name__ == "__main__":
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="runtime-bench-") as tmp:
        run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp))
