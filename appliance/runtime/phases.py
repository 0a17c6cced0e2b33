"""Start-up phase of every served model: one small JSON file each, `<run_dir>/phases/<model>.json`.

    verifying → waiting → loading → ready        (failed: from any of them)

Written by the boot sequencer (`appliance runtime launch`), its health watcher and the fatal
listener; read by the next model's sequencer and by the gateway's `/startupz`. Each write replaces
the file atomically (temp file + rename), so a reader never sees half a record, and is appended to
`history.jsonl` — the start-up timeline an operator (or a test) can replay.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from appliance import constants
from appliance.manifest import Catalog, Profile
from appliance.runtime.served import served_models
from appliance.store.lock import write_atomic

PHASES = ("verifying", "waiting", "loading", "ready", "failed")
PENDING = "pending"  # no record yet: supervisord has not started the model's program


@dataclass(frozen=True)
class PhaseRecord:
    model: str
    phase: str
    since: float  # unix time the phase was entered
    port: int | None = None
    detail: str = ""
    pid: int | None = None  # the sequencer's pid, which exec turns into the vLLM server's

    def seconds(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.since)


def phases_dir(run_dir: Path | None = None) -> Path:
    return (run_dir or constants.run_dir()) / "phases"


def phase_path(model: str, run_dir: Path | None = None) -> Path:
    return phases_dir(run_dir) / f"{model}.json"


def history_path(run_dir: Path | None = None) -> Path:
    return phases_dir(run_dir) / "history.jsonl"


@contextlib.contextmanager
def _locked(run_dir: Path | None) -> Iterator[None]:
    """One writer at a time: keeps read-compare-write transitions and the history order consistent."""
    directory = phases_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _parse(text: str) -> PhaseRecord | None:
    try:
        data = json.loads(text)
        return PhaseRecord(**data) if data.get("phase") in PHASES else None
    except (ValueError, TypeError, AttributeError):
        return None


def read_phase(model: str, run_dir: Path | None = None) -> PhaseRecord | None:
    """The model's current phase, None if it has none yet (or the file is unreadable)."""
    try:
        return _parse(phase_path(model, run_dir).read_text(encoding="utf-8"))
    except OSError:
        return None


def _write(record: PhaseRecord, run_dir: Path | None) -> None:
    line = json.dumps(asdict(record), sort_keys=True)
    write_atomic(phase_path(record.model, run_dir), line + "\n")
    with open(history_path(run_dir), "a", encoding="utf-8") as history:
        history.write(line + "\n")


def write_phase(
    model: str,
    phase: str,
    *,
    port: int | None = None,
    detail: str = "",
    pid: int | None = None,
    run_dir: Path | None = None,
    now: float | None = None,
) -> PhaseRecord:
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; one of {', '.join(PHASES)}")
    record = PhaseRecord(model, phase, time.time() if now is None else now, port, detail, pid)
    with _locked(run_dir):
        _write(record, run_dir)
    return record


def transition(
    model: str,
    phase: str,
    *,
    only_from: Collection[str],
    pid: int | None = None,
    detail: str = "",
    run_dir: Path | None = None,
) -> PhaseRecord | None:
    """Move to `phase` only if the current phase is in `only_from` (and, with `pid`, belongs to that
    process); None if not. A watcher of a dead server can then never overwrite its successor's record."""
    with _locked(run_dir):
        current = read_phase(model, run_dir)
        if current is None or current.phase not in only_from or (pid is not None and current.pid != pid):
            return None
        record = PhaseRecord(model, phase, time.time(), current.port, detail, current.pid)
        _write(record, run_dir)
        return record


def read_history(run_dir: Path | None = None) -> list[PhaseRecord]:
    try:
        lines = history_path(run_dir).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [r for r in map(_parse, lines) if r is not None]


def ready_since_start(model: str, run_dir: Path | None = None) -> bool:
    """Did `model` reach `ready` since its launcher last started (its last `verifying`)? Read from the
    history, so a watcher that already moved the record on after an exit cannot hide it."""
    ready = False
    for record in read_history(run_dir):
        if record.model == model:
            ready = record.phase == "ready" or (ready and record.phase != "verifying")
    return ready


def clear(run_dir: Path | None = None) -> None:
    """Forget a previous boot's phases (called by `appliance boot` before supervisord starts)."""
    directory = phases_dir(run_dir)
    if directory.is_dir():
        for path in directory.iterdir():
            if path.suffix in (".json", ".jsonl"):
                path.unlink(missing_ok=True)


@dataclass(frozen=True)
class ModelStartup:
    model: str
    essential: bool
    phase: str  # one of PHASES, or PENDING
    seconds: float  # in this phase
    port: int
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 1)
        return data


def startup_report(
    catalog: Catalog, profile: Profile, run_dir: Path | None = None, now: float | None = None
) -> list[ModelStartup]:
    """Every served model's phase and seconds in it, in start order (what `/startupz` shows)."""
    now = time.time() if now is None else now
    report = []
    for served in served_models(catalog, profile):
        record = read_phase(served.name, run_dir)
        if record is None:
            report.append(ModelStartup(served.name, served.essential, PENDING, 0.0, served.port))
        else:
            item = ModelStartup(
                served.name, served.essential, record.phase, record.seconds(now), served.port, record.detail
            )
            report.append(item)
    return report


def all_essential_ready(report: list[ModelStartup]) -> bool:
    return all(m.phase == "ready" for m in report if m.essential)


def pid_alive(pid: int) -> bool:
    """Is `pid` running (a zombie waiting for its parent to reap it counts as dead)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"
