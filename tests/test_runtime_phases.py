"""Phase files, the waiting logic against fake predecessors, the health watcher, and the launcher's
verify step — no vLLM, no supervisord."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appliance.manifest import Catalog
from appliance.runtime import phases
from appliance.runtime.launch import (
    OPTIONAL_GIVE_UP_FACTOR,
    LaunchError,
    flag_value,
    gate,
    predecessor_state,
    prepare,
    wait_turn,
    watch,
)
from appliance.runtime.served import served_models
from appliance.testing.tiny import generate
from tests.conftest import REPO

CATALOG = Catalog(REPO / "manifests")
PROFILE = CATALOG.profile("tiny-cpu")
ORDER = served_models(CATALOG, PROFILE)  # paddleocr-vl (essential), dots-ocr (essential), qwen3-vl (optional)
PADDLE, DOTS, QWEN = ORDER


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return tmp_path / "run"


# --- phase files -----------------------------------------------------------------------------------


def test_write_read_and_history(run: Path) -> None:
    assert phases.read_phase("m", run) is None
    phases.write_phase("m", "verifying", port=1, pid=10, run_dir=run, now=100.0)
    phases.write_phase("m", "loading", port=1, pid=10, detail="go", run_dir=run, now=105.0)
    record = phases.read_phase("m", run)
    assert record == phases.PhaseRecord("m", "loading", 105.0, 1, "go", 10)
    assert record.seconds(now=107.5) == 2.5
    assert [r.phase for r in phases.read_history(run)] == ["verifying", "loading"]
    assert sorted(p.name for p in (run / "phases").iterdir() if not p.name.startswith(".")) == [
        "history.jsonl",
        "m.json",
    ]
    with pytest.raises(ValueError, match="unknown phase"):
        phases.write_phase("m", "booting", run_dir=run)


def test_transition_only_from_and_pid(run: Path) -> None:
    phases.write_phase("m", "loading", port=1, pid=10, run_dir=run)
    assert phases.transition("m", "ready", only_from=("loading",), pid=99, run_dir=run) is None  # not its record
    assert phases.transition("m", "ready", only_from=("waiting",), run_dir=run) is None
    moved = phases.transition("m", "ready", only_from=("loading",), pid=10, detail="ok", run_dir=run)
    assert moved is not None and (moved.phase, moved.port, moved.pid) == ("ready", 1, 10)
    assert phases.transition("nobody", "ready", only_from=("loading",), run_dir=run) is None


def test_unreadable_record_is_none(run: Path) -> None:
    (run / "phases").mkdir(parents=True)
    (run / "phases" / "m.json").write_text("{not json")
    assert phases.read_phase("m", run) is None


def test_startup_report(run: Path) -> None:
    phases.write_phase(PADDLE.name, "ready", port=PADDLE.port, run_dir=run, now=100.0)
    phases.write_phase(DOTS.name, "loading", port=DOTS.port, run_dir=run, now=110.0)
    report = phases.startup_report(CATALOG, PROFILE, run, now=130.0)
    assert [(m.model, m.phase, m.seconds, m.essential) for m in report] == [
        (PADDLE.name, "ready", 30.0, True),
        (DOTS.name, "loading", 20.0, True),
        (QWEN.name, phases.PENDING, 0.0, False),
    ]
    assert not phases.all_essential_ready(report)
    phases.write_phase(DOTS.name, "ready", run_dir=run)
    assert phases.all_essential_ready(phases.startup_report(CATALOG, PROFILE, run))  # optional qwen not needed
    phases.clear(run)
    assert phases.read_phase(PADDLE.name, run) is None and phases.read_history(run) == []


# --- waiting: gate and predecessor state -----------------------------------------------------------


def _states(**by_name: str):  # type: ignore[no-untyped-def]
    return lambda pred: (by_name[pred.name.replace("-", "_")], pred.name)


def test_gate_waits_for_nearest_predecessor() -> None:
    assert gate([], _states()) == (True, "first in start order", None)
    ok, _, healthy = gate([DOTS, PADDLE], _states(tiny_dots_ocr="healthy", tiny_paddleocr_vl="starting"))
    assert ok and healthy is DOTS
    assert not gate([DOTS, PADDLE], _states(tiny_dots_ocr="starting", tiny_paddleocr_vl="healthy"))[0]


def test_gate_skips_dead_optional_but_then_waits_for_the_one_before() -> None:
    # qwen (optional) failed: the model after it waits for dots instead, it does not rush in
    ok, why, _ = gate([QWEN, DOTS], _states(tiny_qwen3_vl="dead", tiny_dots_ocr="starting"))
    assert not ok and why == DOTS.name
    ok, _, healthy = gate([QWEN, DOTS], _states(tiny_qwen3_vl="dead", tiny_dots_ocr="healthy"))
    assert ok and healthy is DOTS
    assert gate([QWEN], _states(tiny_qwen3_vl="dead"))[0]  # every predecessor dead and optional: go


def test_predecessor_state(run: Path) -> None:
    up = {PADDLE.port: 200}

    def health(port: int) -> int | None:
        return up.get(port)

    assert predecessor_state(PADDLE, health, run)[0] == "healthy"
    # refusing connections with no record: not started yet, i.e. starting — never dead
    assert predecessor_state(DOTS, health, run) == ("starting", f"{DOTS.name} (not started yet, port {DOTS.port})")
    phases.write_phase(DOTS.name, "failed", detail="verify", run_dir=run)
    assert predecessor_state(DOTS, health, run)[0] == "starting"  # essential: its FATAL stops everything
    phases.write_phase(QWEN.name, "failed", detail="verify", run_dir=run)
    assert predecessor_state(QWEN, health, run)[0] == "dead"
    phases.write_phase(QWEN.name, "loading", run_dir=run, now=1000.0)
    stuck = 1000.0 + OPTIONAL_GIVE_UP_FACTOR * QWEN.cold_start + 1
    assert predecessor_state(QWEN, health, run, now=1000.0 + QWEN.cold_start)[0] == "starting"
    assert predecessor_state(QWEN, health, run, now=stuck)[0] == "dead"
    up[QWEN.port] = 503  # answering, but not healthy yet
    assert predecessor_state(QWEN, health, run, now=1000.0 + 10)[0] == "starting"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1


def test_wait_turn_until_predecessor_healthy(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    phases.write_phase(PADDLE.name, "loading", port=PADDLE.port, pid=7, run_dir=run)

    def health(port: int) -> int | None:  # paddle answers after 25 s of loading
        return 200 if port == PADDLE.port and clock.now >= 25 else None

    why = wait_turn(DOTS, ORDER, health=health, run_dir=run, sleep=clock.sleep, clock=clock.time)
    assert why == f"{PADDLE.name} answers /health 200" and 25 <= clock.now < 26
    # what the waiter saw is recorded for its predecessor (its own watcher may lag behind)
    assert phases.read_phase(PADDLE.name, run).phase == "ready"  # type: ignore[union-attr]
    logged = [line for line in capsys.readouterr().err.splitlines() if "waiting for" in line]
    assert len(logged) == 3  # at 0, 10 and 20 s: every LOG_EVERY seconds, not every poll


def test_wait_turn_does_not_wait_forever_on_dead_optional(run: Path) -> None:
    """A fourth model after the optional qwen: qwen failed, dots is healthy → go."""
    clock = FakeClock()
    phases.write_phase(QWEN.name, "failed", detail="FATAL", run_dir=run)
    fourth = QWEN.__class__(**{**QWEN.__dict__, "name": "fourth", "port": 1})
    order = [*ORDER, fourth]

    def health(port: int) -> int | None:
        return 200 if port in (PADDLE.port, DOTS.port) else None

    why = wait_turn(fourth, order, health=health, run_dir=run, sleep=clock.sleep, clock=clock.time)
    assert why == f"{DOTS.name} answers /health 200" and clock.sleeps == 0


# --- loading: the watcher --------------------------------------------------------------------------


def test_watcher_ready_lost_and_exit(run: Path) -> None:
    script = iter([None, None, 200, 200, 503, 200])  # refused while loading, up, a hiccup, up again
    seen: list[str] = []
    alive = iter([True] * 6 + [False])
    phases.write_phase("m", "loading", port=5, pid=42, run_dir=run)

    def health(port: int) -> int | None:
        return next(script)

    def sleep(_: float) -> None:
        seen.append(phases.read_phase("m", run).phase)  # type: ignore[union-attr]

    watch("m", 5, 42, health=health, alive=lambda pid: next(alive), sleep=sleep, run_dir=run)
    assert seen == ["loading", "loading", "ready", "ready", "loading", "ready"]
    final = phases.read_phase("m", run)
    assert final is not None and final.phase == "loading" and "exited" in final.detail


def test_watcher_of_a_dead_server_leaves_the_successor_alone(run: Path) -> None:
    phases.write_phase("m", "verifying", port=5, pid=43, run_dir=run)  # supervisord already restarted it
    watch("m", 5, 42, health=lambda port: None, alive=lambda pid: False, sleep=lambda s: None, run_dir=run)
    assert phases.read_phase("m", run).phase == "verifying"  # type: ignore[union-attr]


# --- the launcher's checks -------------------------------------------------------------------------


def test_flag_value() -> None:
    assert flag_value(["x", "--model", "/m", "--port=9"], "--model") == "/m"
    assert flag_value(["x", "--port=9"], "--port") == "9"
    assert flag_value(["x", "--model"], "--model") is None


def _command(model_dir: Path, port: int) -> list[str]:
    return ["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--port", str(port)]


def test_prepare_verifies_then_fails_on_damage(tmp_path: Path, run: Path) -> None:
    model_dir = tmp_path / "store" / PADDLE.name
    generate(PADDLE.manifest.engine, model_dir)
    me, why = prepare(PADDLE.name, _command(model_dir, PADDLE.port), CATALOG, PROFILE, run)
    assert me == PADDLE and why == "first in start order"
    assert [r.phase for r in phases.read_history(run)] == ["verifying"]

    (model_dir / "config.json").write_text("{}")  # wrong size
    shutil.copy(model_dir / "tokenizer.json", model_dir / "extra.json")
    with pytest.raises(LaunchError, match=r"deep verify .* failed: .*config\.json: size"):
        prepare(PADDLE.name, _command(model_dir, PADDLE.port), CATALOG, PROFILE, run)
    record = phases.read_phase(PADDLE.name, run)
    assert record is not None and record.phase == "failed" and "extra.json" in record.detail


def test_prepare_finds_a_flipped_byte_unless_told_fast(tmp_path: Path, run: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Same size, one byte changed: only the default deep verify sees it, and names the file."""
    model_dir = tmp_path / "store" / PADDLE.name
    generate(PADDLE.manifest.engine, model_dir)
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(LaunchError, match=r"deep verify .* failed: .*model\.safetensors: sha256"):
        prepare(PADDLE.name, _command(model_dir, PADDLE.port), CATALOG, PROFILE, run)
    monkeypatch.setenv("APPLIANCE_VERIFY", "fast")
    prepare(PADDLE.name, _command(model_dir, PADDLE.port), CATALOG, PROFILE, run)
    monkeypatch.setenv("APPLIANCE_VERIFY", "sloppy")
    with pytest.raises(LaunchError, match="APPLIANCE_VERIFY='sloppy'"):
        prepare(PADDLE.name, _command(model_dir, PADDLE.port), CATALOG, PROFILE, run)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ([], "no server command"),
        (["python3", "--model", "/x", "--port", "1"], "--port 1 but profile"),
        (["python3", "--port", str(PADDLE.port)], "no --model"),
        (["python3", "--model", "/nonexistent"], "model directory is missing"),
    ],
)
def test_prepare_refuses(command: list[str], message: str, run: Path) -> None:
    with pytest.raises(LaunchError, match=message):
        prepare(PADDLE.name, command, CATALOG, PROFILE, run)
    assert phases.read_phase(PADDLE.name, run).phase == "failed"  # type: ignore[union-attr]


def test_prepare_unknown_model(run: Path) -> None:
    with pytest.raises(Exception, match="unknown served model"):
        prepare("nope", ["x"], CATALOG, PROFILE, run)
