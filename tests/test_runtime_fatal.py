"""The fatal listener driven through supervisor's event protocol with in-memory streams."""

from __future__ import annotations

import io
from pathlib import Path

from appliance.runtime import phases
from appliance.runtime.fatal import read_fatal, run


def _event(name: str, payload: str, serial: int = 1) -> str:
    header = (
        f"ver:3.0 server:supervisor serial:{serial} pool:fatal poolserial:{serial} eventname:{name} len:{len(payload)}"
    )
    return header + "\n" + payload


def _fatal(program: str, serial: int = 1) -> str:
    return _event("PROCESS_STATE_FATAL", f"processname:{program} groupname:{program} from_state:BACKOFF", serial)


def _drive(events: list[str], run_dir: Path) -> tuple[str, list[str]]:
    stdin, stdout = io.StringIO("".join(events)), io.StringIO()
    shutdowns: list[str] = []
    run({"essential-a", "gateway"}, stdin, stdout, run_dir, shutdown=lambda: shutdowns.append("shutdown"))
    return stdout.getvalue(), shutdowns


def test_protocol_ready_and_ok_for_every_event(tmp_path: Path) -> None:
    tick = _event("TICK_5", "when:1700000000", serial=1)
    out, shutdowns = _drive([tick, tick], tmp_path)
    # READY, then RESULT 2\nOK after each event, READY again; nothing else on stdout
    assert out == "READY\nRESULT 2\nOKREADY\nRESULT 2\nOKREADY\n"
    assert shutdowns == [] and read_fatal(tmp_path) is None


def test_optional_fatal_marks_failed_only(tmp_path: Path) -> None:
    phases.write_phase("optional-b", "loading", port=9, pid=5, run_dir=tmp_path)
    out, shutdowns = _drive([_fatal("optional-b")], tmp_path)
    assert out == "READY\nRESULT 2\nOKREADY\n"
    assert shutdowns == [] and read_fatal(tmp_path) is None
    record = phases.read_phase("optional-b", tmp_path)
    assert record is not None and record.phase == "failed" and "FATAL" in record.detail and record.port == 9


def test_essential_fatal_records_and_shuts_down(tmp_path: Path) -> None:
    phases.write_phase("essential-a", "failed", detail="fast verify of /models/a failed: x: missing", run_dir=tmp_path)
    out, shutdowns = _drive([_fatal("essential-a"), _fatal("gateway", 2)], tmp_path)
    assert out.count("RESULT 2\nOK") == 2
    assert shutdowns == ["shutdown", "shutdown"]
    fatal = read_fatal(tmp_path)
    assert fatal is not None and fatal["program"] == "gateway"  # the last one wins; both were logged
    assert fatal["model"] is None  # the gateway is a program, not a model
    record = phases.read_phase("essential-a", tmp_path)
    assert record is not None and record.phase == "failed"
    assert "went FATAL (from BACKOFF)" in record.detail and "x: missing" in record.detail
    assert phases.read_phase("gateway", tmp_path) is None  # not a model: no phase file


def test_handler_error_still_acknowledges(tmp_path: Path) -> None:
    def boom() -> None:
        raise RuntimeError("rpc down")

    stdin, stdout = io.StringIO(_fatal("essential-a")), io.StringIO()
    run({"essential-a"}, stdin, stdout, tmp_path, shutdown=boom)
    assert stdout.getvalue() == "READY\nRESULT 2\nOKREADY\n"  # never leave supervisord waiting
    assert read_fatal(tmp_path) is not None


def _exited(program: str, serial: int, expected: int = 0) -> str:
    payload = f"processname:{program} groupname:{program} from_state:RUNNING expected:{expected} pid:{100 + serial}"
    return _event("PROCESS_STATE_EXITED", payload, serial)


def _drive_exits(events: list[str], run_dir: Path, retries: int = 2) -> tuple[list[str], list[str]]:
    stdin, stdout = io.StringIO("".join(events)), io.StringIO()
    shutdowns: list[str] = []
    stopped: list[str] = []
    run(
        {"essential-a", "gateway"},
        stdin,
        stdout,
        run_dir,
        shutdown=lambda: shutdowns.append("shutdown"),
        retries={"essential-a": retries, "optional-b": retries},
        stop=stopped.append,
    )
    assert stdout.getvalue().count("RESULT 2\nOK") == len(events)
    return shutdowns, stopped


def _start(model: str, run_dir: Path, *, ready: bool) -> None:
    phases.write_phase(model, "verifying", port=9, pid=5, run_dir=run_dir)
    phases.write_phase(model, "loading", port=9, pid=5, run_dir=run_dir)
    if ready:
        phases.write_phase(model, "ready", port=9, pid=5, run_dir=run_dir)
    phases.write_phase(model, "loading", port=9, pid=5, detail="vLLM exited", run_dir=run_dir)  # the watcher


def test_essential_exiting_while_loading_past_its_retries_ends_the_appliance(tmp_path: Path) -> None:
    """RUNNING after a few seconds, a model dying while it loads is a failed start for the listener:
    with 2 retries the third exit before ready shuts the appliance down (supervisord alone would
    restart it forever)."""
    _start("essential-a", tmp_path, ready=False)
    shutdowns, _ = _drive_exits([_exited("essential-a", 1), _exited("essential-a", 2)], tmp_path)
    assert shutdowns == [] and read_fatal(tmp_path) is None
    _start("essential-a", tmp_path, ready=False)
    shutdowns, _ = _drive_exits([_exited("essential-a", n) for n in (1, 2, 3)], tmp_path)
    assert shutdowns == ["shutdown"]
    fatal = read_fatal(tmp_path)
    assert fatal is not None and fatal["model"] == "essential-a" and "exited before ready" in str(fatal["reason"])


def test_exits_after_ready_and_expected_exits_are_not_failed_starts(tmp_path: Path) -> None:
    _start("essential-a", tmp_path, ready=True)  # served, then crashed: supervisord's restart is right
    events = [_exited("essential-a", n) for n in (1, 2, 3, 4)] + [_exited("essential-a", 5, expected=1)]
    shutdowns, stopped = _drive_exits(events, tmp_path)
    assert shutdowns == [] and stopped == [] and read_fatal(tmp_path) is None


def test_optional_exiting_while_loading_is_stopped_and_marked_failed(tmp_path: Path) -> None:
    _start("optional-b", tmp_path, ready=False)
    shutdowns, stopped = _drive_exits([_exited("optional-b", n) for n in (1, 2)], tmp_path, retries=1)
    assert shutdowns == [] and stopped == ["optional-b"] and read_fatal(tmp_path) is None
    record = phases.read_phase("optional-b", tmp_path)
    assert record is not None and record.phase == "failed" and "exited before ready" in record.detail
