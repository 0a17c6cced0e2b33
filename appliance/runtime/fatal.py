"""Fail fast: `appliance runtime fatal-listener --essential a,b` (supervisord event listener).

supervisord has no "exit when a program goes FATAL", and exits 0 on a plain shutdown. This listener
hears PROCESS_STATE_FATAL: an optional model only gets its phase marked `failed` (the appliance runs
degraded); an essential program also gets `<run_dir>/fatal` recorded and supervisord asked to shut
down — `appliance boot` turns that record into a non-zero exit, so the orchestrator sees the failure.

A model is RUNNING to supervisord after a few seconds (supervisor.py: MODEL_STARTSECS) though it
loads for minutes, so supervisord would restart a model that dies while loading forever. The
listener also hears PROCESS_STATE_EXITED: an unexpected exit of a model that had not reached
`ready` since its launcher started is a failed start; more of them than the model's start retries
is handled like a FATAL (an optional model is stopped).

Protocol (supervisor's `docs/events.rst`): write READY, read one header line and exactly `len`
characters of payload, act, answer `RESULT 2\\nOK`. stdout belongs to the protocol: log to stderr.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TextIO

from supervisor import childutils

from appliance import constants
from appliance.runtime import phases

FATAL_FILE = "fatal"


def log(message: str) -> None:
    sys.stderr.write(f"[fatal-listener] {message}\n")  # one write: supervisord may read lines in chunks
    sys.stderr.flush()


def fatal_path(run_dir: Path | None = None) -> Path:
    return (run_dir or constants.run_dir()) / FATAL_FILE


def read_fatal(run_dir: Path | None = None) -> dict[str, object] | None:
    """What brought the appliance down, if an essential program went FATAL."""
    try:
        return json.loads(fatal_path(run_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _rpc_env() -> dict[str, str]:
    """supervisord's XML-RPC address (given to listeners) with the boot's credentials."""
    return {
        "SUPERVISOR_SERVER_URL": os.environ.get("SUPERVISOR_SERVER_URL", ""),
        "SUPERVISOR_USERNAME": os.environ.get("APPLIANCE_SUPERVISOR_USER", ""),
        "SUPERVISOR_PASSWORD": os.environ.get("APPLIANCE_SUPERVISOR_PASSWORD", ""),
    }


def shutdown_supervisord() -> None:
    """Ask supervisord to stop everything: XML-RPC over its socket with the boot credentials, else
    SIGTERM to our parent (which is supervisord)."""
    env = _rpc_env()
    try:
        if not env["SUPERVISOR_SERVER_URL"]:
            raise OSError("SUPERVISOR_SERVER_URL is not set")
        childutils.getRPCInterface(env).supervisor.shutdown()
        log("asked supervisord to shut down")
    except Exception as exc:  # any RPC failure: the signal does the same
        log(f"XML-RPC shutdown failed ({exc}); sending SIGTERM to supervisord (pid {os.getppid()})")
        os.kill(os.getppid(), signal.SIGTERM)


def handle_fatal(
    payload_headers: dict[str, str],
    essential: Collection[str],
    run_dir: Path | None = None,
    shutdown: Callable[[], None] = shutdown_supervisord,
) -> bool:
    """React to one PROCESS_STATE_FATAL; True if it was an essential program."""
    name = payload_headers.get("processname", "?")
    from_state = payload_headers.get("from_state", "?")
    record = phases.read_phase(name, run_dir)
    if record is not None and record.phase == "failed" and record.detail:
        last = record.detail
    else:
        where = f" while {record.phase}" if record else ""
        last = f"it kept exiting{where} before its start-up time was over; see its log lines above"
    reason = f"{name} went FATAL (from {from_state}) after supervisord's retries: {last}"
    if record is not None:  # a model (the gateway has no phase)
        phases.write_phase(name, "failed", port=record.port, detail=reason, pid=record.pid, run_dir=run_dir)
    if name not in essential:
        log(f"optional {reason}; serving without it")
        return False
    log(f"essential {reason}; shutting the appliance down")
    path = fatal_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"program": name, "model": name if record is not None else None, "reason": reason, "time": time.time()}
    path.write_text(json.dumps(data) + "\n", encoding="utf-8")
    shutdown()
    return True


def stop_program(name: str) -> None:
    """Stop an optional model that keeps failing to start (supervisord would restart it forever)."""
    env = _rpc_env()
    try:
        childutils.getRPCInterface(env).supervisor.stopProcess(name, False)
        log(f"stopped {name}")
    except Exception as exc:  # best effort: it stays failed in /startupz either way
        log(f"could not stop {name}: {exc}")


class StartCounter:
    """Failed starts per model: unexpected exits before `ready` since the last ready."""

    def __init__(self, retries: Mapping[str, int]) -> None:
        self.retries = dict(retries)
        self.failed: dict[str, int] = {}

    def exited(self, headers: Mapping[str, str], run_dir: Path | None) -> tuple[int, int] | None:
        """(failed starts so far, allowed retries) when this exit was a failed start, else None."""
        name = headers.get("processname", "")
        if name not in self.retries or headers.get("expected") == "1":
            return None
        if phases.ready_since_start(name, run_dir):
            self.failed[name] = 0  # it served, then died: supervisord's restart is the right answer
            return None
        self.failed[name] = self.failed.get(name, 0) + 1
        return self.failed[name], self.retries[name]


def handle_exited(
    headers: dict[str, str],
    essential: Collection[str],
    counter: StartCounter,
    run_dir: Path | None = None,
    shutdown: Callable[[], None] = shutdown_supervisord,
    stop: Callable[[str], None] = stop_program,
) -> bool:
    """React to one PROCESS_STATE_EXITED; True once it counts as FATAL."""
    counted = counter.exited(headers, run_dir)
    if counted is None:
        return False
    failed, retries = counted
    name = headers.get("processname", "?")
    if failed <= retries:
        log(f"{name} exited before it was ready (failed start {failed} of {retries + 1}); supervisord restarts it")
        return False
    headers = {**headers, "from_state": "loading, exited before ready"}
    if name not in essential:
        stop(name)
    handle_fatal(headers, essential, run_dir, shutdown)
    return True


def parse_retries(text: str) -> dict[str, int]:
    """`a=2,b=3` → {"a": 2, "b": 3}."""
    retries = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        retries[name.strip()] = int(value)
    return retries


def run(
    essential: Collection[str],
    stdin: TextIO,
    stdout: TextIO,
    run_dir: Path | None = None,
    shutdown: Callable[[], None] = shutdown_supervisord,
    retries: Mapping[str, int] | None = None,
    stop: Callable[[str], None] = stop_program,
) -> None:
    """The listener loop; returns when supervisord closes our stdin."""
    log(f"listening for PROCESS_STATE_FATAL/EXITED; essential: {', '.join(sorted(essential)) or '(none)'}")
    counter = StartCounter(retries or {})
    while True:
        childutils.listener.ready(stdout)
        line = stdin.readline()
        if not line:
            return
        headers = childutils.get_headers(line)
        payload = stdin.read(int(headers.get("len", 0)))
        event = headers.get("eventname")
        if event in ("PROCESS_STATE_FATAL", "PROCESS_STATE_EXITED"):
            event_headers, _ = childutils.eventdata(payload + "\n")
            try:
                if event == "PROCESS_STATE_FATAL":
                    handle_fatal(event_headers, essential, run_dir, shutdown)
                else:
                    handle_exited(event_headers, essential, counter, run_dir, shutdown, stop)
            except Exception as exc:  # never let the listener die on one event: log and go on
                log(f"could not handle {payload!r}: {exc!r}")
        childutils.listener.ok(stdout)
