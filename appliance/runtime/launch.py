"""Boot sequencer: `appliance runtime launch MODEL -- CMD…`, supervisord's command for every model.

    verifying  verify the model folder (the `--model` of CMD) against its lock (deep: sha256)
    waiting    until the previous served model answers /health 200 — or is optional and dead
    loading    exec CMD (the vLLM server) in this very process, so supervisord's signals reach
               vLLM directly; a forked watcher polls /health and writes `ready`
    failed     verify failed (exit 1, supervisord retries, then FATAL), or FATAL (fatal listener)

Concurrent vLLM start-ups over-commit GPU memory (DESIGN §5), so servers start one at a time. A
port that refuses connections is a server still starting, not a dead one: only the phase file
(`failed`) or an optional predecessor stuck far past its measured cold start lets the next one go.
"""

from __future__ import annotations

import http.client
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from appliance.errors import ApplianceError, LockError, UnknownNameError
from appliance.manifest import Catalog, Profile
from appliance.runtime import phases
from appliance.runtime.compile_cache import CacheDecision, host_key, prepare_cache
from appliance.runtime.served import Served, served_models
from appliance.store.lock import read_lock
from appliance.store.verify import verify_deep, verify_fast

LOG_EVERY = 10.0  # seconds between "still waiting for …" lines
POLL = 0.5  # seconds between /health polls while waiting or loading
READY_POLL = 2.0  # … once ready (the watcher notices a server that stops answering)
# An optional predecessor still loading after this many times its measured cold start is treated as
# dead: it must not hold the essential models behind it back forever.
OPTIONAL_GIVE_UP_FACTOR = 2.0

Health = Callable[[int], int | None]


class LaunchError(ApplianceError):
    """The model cannot be started (store damaged, lock missing, command inconsistent)."""


def log(model: str, message: str) -> None:
    sys.stderr.write(f"[launch {model}] {message}\n")  # one write: supervisord may read lines in chunks
    sys.stderr.flush()


def health_status(port: int, timeout: float = 2.0) -> int | None:
    """HTTP status of GET http://127.0.0.1:<port>/health; None if nothing answers (yet)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def flag_value(command: list[str], flag: str) -> str | None:
    """The value of `--flag X` or `--flag=X` in a command line."""
    for index, arg in enumerate(command):
        if arg == flag and index + 1 < len(command):
            return command[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


# --- waiting ------------------------------------------------------------------------------------


def predecessor_state(
    pred: Served, health: Health, run_dir: Path | None = None, now: float | None = None
) -> tuple[str, str]:
    """("healthy" | "dead" | "starting", description). Only an optional model can be "dead"; an
    essential one that failed brings the whole appliance down (fatal listener), so waiting is right."""
    if health(pred.port) == 200:
        return "healthy", f"{pred.name} answers /health 200"
    record = phases.read_phase(pred.name, run_dir)
    if record is None:
        return "starting", f"{pred.name} (not started yet, port {pred.port})"
    seconds = record.seconds(now)
    if not pred.essential:
        if record.phase == "failed":
            return "dead", f"{pred.name} (optional) failed: {record.detail}"
        if record.phase == "loading" and seconds > OPTIONAL_GIVE_UP_FACTOR * pred.cold_start:
            return "dead", f"{pred.name} (optional) still loading after {seconds:.0f} s"
    return "starting", f"{pred.name} ({record.phase} for {seconds:.0f} s, port {pred.port})"


def gate(predecessors: list[Served], state: Callable[[Served], tuple[str, str]]) -> tuple[bool, str, Served | None]:
    """May the next model load? `predecessors` nearest first. Wait for the nearest one that is not a
    dead optional model; skipping a dead one means waiting for the one before it instead.
    Returns (open, why, the predecessor found healthy if any)."""
    skipped = []
    for pred in predecessors:
        status, description = state(pred)
        if status == "healthy":
            return True, description, pred
        if status == "starting":
            return False, description, None
        skipped.append(description)
    return True, "; ".join(skipped) or "first in start order", None


def wait_turn(
    me: Served,
    order: list[Served],
    *,
    health: Health = health_status,
    run_dir: Path | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Block until `me` may load; returns why. Logs what it waits for every LOG_EVERY seconds."""
    index = next(i for i, s in enumerate(order) if s.name == me.name)
    predecessors = list(reversed(order[:index]))
    started = clock()
    last_log: float | None = None
    while True:
        ok, why, healthy = gate(predecessors, lambda pred: predecessor_state(pred, health, run_dir))
        if ok:
            if healthy is not None:  # record what we saw: its own watcher may not have polled yet
                phases.transition(healthy.name, "ready", only_from=("loading",), detail="/health 200", run_dir=run_dir)
            return why
        if last_log is None or clock() - last_log >= LOG_EVERY:
            log(me.name, f"waiting for {why}; {clock() - started:.0f} s so far")
            last_log = clock()
        sleep(POLL)


# --- loading ------------------------------------------------------------------------------------


def watch(
    model: str,
    port: int,
    vllm_pid: int,
    *,
    health: Health = health_status,
    alive: Callable[[int], bool] = phases.pid_alive,
    sleep: Callable[[float], None] = time.sleep,
    run_dir: Path | None = None,
) -> None:
    """Poll the server until its process dies: `ready` on /health 200, `loading` again if it stops
    answering, `loading` ("exited") when the process is gone. Writes only the record of `vllm_pid`."""
    ready = False

    def move(phase: str, only_from: tuple[str, ...], detail: str) -> None:
        phases.transition(model, phase, only_from=only_from, pid=vllm_pid, detail=detail, run_dir=run_dir)

    while True:
        if not alive(vllm_pid):
            detail = f"vLLM (pid {vllm_pid}) exited; supervisord restarts it"
            move("loading", ("loading", "ready"), detail)
            return
        status = health(port)
        if status == 200 and not ready:
            move("ready", ("loading",), "/health 200")
            log(model, f"ready: /health 200 on port {port}")
            ready = True
        elif status != 200 and ready:
            detail = f"/health {status or 'refused'} after being ready"
            move("loading", ("ready",), detail)
            log(model, detail)
            ready = False
        sleep(READY_POLL if ready else POLL)


def _spawn_watcher(model: str, port: int, run_dir: Path | None) -> None:
    """Double fork: the watcher is re-parented to PID 1 (tini reaps it) instead of becoming a child
    vLLM never waits for. It stays in this process group, so supervisord's stopasgroup ends it too."""
    vllm_pid = os.getpid()
    child = os.fork()
    if child:
        os.waitpid(child, 0)
        return
    try:
        if os.fork() == 0:
            try:
                watch(model, port, vllm_pid, run_dir=run_dir)
                # The server is gone; whatever it left in its process group (vLLM's EngineCore and
                # workers keep memory if the API server was killed) goes too. Only when it led a group
                # of its own, as under supervisord: never the group of a shell or a test runner.
                if os.getpgrp() == vllm_pid:
                    os.killpg(vllm_pid, signal.SIGKILL)
            finally:
                os._exit(0)
    finally:
        os._exit(0)


# --- the command --------------------------------------------------------------------------------


def verify_mode() -> str:
    """APPLIANCE_VERIFY: `deep` (default) re-hashes every file before vLLM reads it — a flipped byte
    keeps the size, and a damaged weight file loads without error; all launchers verify at once,
    so only the first model's hashing delays the start. `fast`: sizes and the file set only."""
    mode = os.environ.get("APPLIANCE_VERIFY", "deep").strip().lower() or "deep"
    if mode not in ("deep", "fast"):
        raise LaunchError(f"APPLIANCE_VERIFY={mode!r}: use deep or fast")
    return mode


def _fail(model: str, port: int, detail: str, run_dir: Path | None) -> NoReturn:
    phases.write_phase(model, "failed", port=port, detail=detail, pid=os.getpid(), run_dir=run_dir)
    raise LaunchError(f"{model}: {detail}")


def prepare(
    model: str, command: list[str], catalog: Catalog, profile: Profile, run_dir: Path | None = None
) -> tuple[Served, str]:
    """verifying + waiting; returns the model and why it may load now. LaunchError (phase `failed`) if not."""
    order = served_models(catalog, profile)
    me = next((s for s in order if s.name == model), None)
    if me is None:
        raise UnknownNameError(f"served model of profile {profile.name}", model, [s.name for s in order])
    pid = os.getpid()
    phases.write_phase(model, "verifying", port=me.port, pid=pid, run_dir=run_dir)
    if not command:
        _fail(model, me.port, "no server command after `--`", run_dir)
    port_arg = flag_value(command, "--port")
    if port_arg is not None and port_arg != str(me.port):
        _fail(model, me.port, f"command has --port {port_arg} but profile {profile.name} says {me.port}", run_dir)
    model_dir = flag_value(command, "--model")
    if model_dir is None:
        _fail(model, me.port, "command has no --model: nothing to verify", run_dir)
    try:
        lock = read_lock(catalog.lock_path(model))
    except LockError as exc:
        _fail(model, me.port, str(exc), run_dir)
    if lock is None:
        _fail(model, me.port, f"no lock at {catalog.lock_path(model)}", run_dir)
    started = time.monotonic()
    mode = verify_mode()
    problems = (verify_deep if mode == "deep" else verify_fast)(Path(model_dir), lock)
    if problems:
        for problem in problems:
            log(model, f"verify: {problem}")
        shown = "; ".join(str(p) for p in problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        _fail(model, me.port, f"{mode} verify of {model_dir} failed: {shown}", run_dir)
    what = "sha256 and size" if mode == "deep" else "size"
    log(model, f"verified {model_dir}: {len(lock.files)} files match the lock by {what} "
               f"({time.monotonic() - started:.2f} s)")  # fmt: skip
    why = "first in start order"
    if me is not order[0]:
        phases.write_phase(model, "waiting", port=me.port, pid=pid, run_dir=run_dir)
        why = wait_turn(me, order, run_dir=run_dir)
        log(model, f"my turn: {why}")
    return me, why


def compile_cache(model: str, command: list[str], catalog: Catalog, profile: Profile) -> CacheDecision:
    """Seed the model's writable compile cache from the image's baked copy when its key matches this
    host; the decision's env points vLLM at that dir. Never fails the start (compile_cache.py)."""
    lock = read_lock(catalog.lock_path(model))  # prepare() proved it readable
    key = host_key(command, lock.digest if lock else "", profile.target.device)
    return prepare_cache(model, key)


def launch(model: str, command: list[str], catalog: Catalog, profile: Profile, run_dir: Path | None = None) -> NoReturn:
    me, why = prepare(model, command, catalog, profile, run_dir)
    cache = compile_cache(model, command, catalog, profile)
    log(model, cache.detail)
    os.environ.update(cache.env)
    detail = f"vLLM starting; its turn because {why}; {cache.detail}"
    phases.write_phase(model, "loading", port=me.port, pid=os.getpid(), run_dir=run_dir, detail=detail)
    log(model, f"loading: exec {shlex.join(command)}")
    sys.stdout.flush()
    sys.stderr.flush()
    _spawn_watcher(model, me.port, run_dir)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        _fail(model, me.port, f"cannot run {command[0]}: {exc.strerror}", run_dir)
