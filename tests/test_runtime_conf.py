"""supervisord.conf rendering: the committed copy is fresh, supervisord itself accepts it, and every
program carries what DESIGN §5 asks for."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
from supervisor.events import EventTypes
from supervisor.options import ServerOptions

from appliance.manifest import Catalog
from appliance.runtime.plan import plan_profile
from appliance.runtime.served import served_models
from appliance.runtime.supervisor import (
    CONF_ENV,
    GATEWAY,
    MODEL_STARTSECS,
    program_timings,
    render_supervisord_conf,
    stop_grace_seconds,
)
from appliance.runtime.vllm_args import vllm_args
from tests.conftest import REPO

CATALOG = Catalog(REPO / "manifests")
COMMITTED = REPO / "supervisord.conf"


def test_committed_conf_is_fresh() -> None:
    """The repo-root supervisord.conf is `appliance render` of the default profile. If this fails,
    regenerate it (`appliance render --out supervisord.conf`, or APPLIANCE_UPDATE_GOLDEN=1) and review."""
    fresh = render_supervisord_conf(CATALOG, CATALOG.profile("tiny-cpu"))
    if os.environ.get("APPLIANCE_UPDATE_GOLDEN"):
        COMMITTED.write_text(fresh)
    assert COMMITTED.read_text() == fresh, "supervisord.conf is stale: run `appliance render --out supervisord.conf`"


def _parse(conf_text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ServerOptions:
    """Let supervisord's own option parser read the file, with the environment boot provides."""
    run = tmp_path / "run"
    run.mkdir()
    env = {
        "APPLIANCE_RUN_DIR": str(run),
        "APPLIANCE_SUPERVISOR_USER": "operator",
        "APPLIANCE_SUPERVISOR_PASSWORD": "s3cret",
        "APPLIANCE_VLLM_PYTHON": "/opt/vllm/bin/python",
        "HF_HOME": "/var/hf",
        "VLLM_CACHE_ROOT": "/var/vllm",
    }
    assert set(env) == set(CONF_ENV)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "supervisord.conf"
    path.write_text(conf_text)
    options = ServerOptions()
    options.realize(args=["-c", str(path)])
    return options


@pytest.mark.parametrize("profile", CATALOG.profile_names())
def test_supervisord_accepts_it(profile: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prof = CATALOG.profile(profile)
    options = _parse(render_supervisord_conf(CATALOG, prof), tmp_path, monkeypatch)
    assert options.nodaemon
    [server] = options.server_configs
    assert server["file"] == str(tmp_path / "run" / "supervisor.sock")
    assert server["chmod"] == 0o700 and (server["username"], server["password"]) == ("operator", "s3cret")

    programs = {p.name: p for g in options.process_group_configs for p in g.process_configs}
    served = served_models(CATALOG, prof)
    plan = plan_profile(CATALOG, prof)
    assert set(programs) == {s.name for s in served} | {GATEWAY, "fatal"}
    for name, program in programs.items():
        if name == "fatal":
            continue
        assert program.stopasgroup and program.killasgroup and program.autorestart
        assert (program.stdout_logfile, program.stderr_logfile) == ("/dev/fd/1", "/dev/fd/2")
        assert program.stdout_logfile_maxbytes == program.stderr_logfile_maxbytes == 0
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_NO_USAGE_STATS", "DO_NOT_TRACK", "VLLM_HOST_IP"):
            assert program.environment[key]

    for index, s in enumerate(served):
        program = programs[s.name]
        argv = shlex.split(program.command)
        # launcher, then the exact vLLM command line, JSON flags intact after quoting
        assert argv[:5] == ["appliance", "runtime", "launch", s.name, "--"]
        assert argv[5:8] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
        assert argv[8:] == vllm_args(s.manifest, prof, s.entry, plan.fraction(s.name))
        assert argv[8:10] == ["--model", f"/models/{s.name}"]
        if prof.target.device == "cpu":
            assert program.environment["VLLM_CPU_KVCACHE_SPACE"] == str(prof.target.cpu_kvcache_gib)
        else:
            assert "--gpu-memory-utilization" in argv and "VLLM_CPU_KVCACHE_SPACE" not in program.environment
        assert program.environment["HF_HOME"] == "/var/hf" and program.environment["VLLM_CACHE_ROOT"] == "/var/vllm"
        assert program.priority == 100 + index

    listener = programs["fatal"]
    essential = {s.name for s in served if s.essential} | {GATEWAY}
    words = shlex.split(listener.command)
    assert words[words.index("--essential") + 1] == ",".join(sorted(essential))
    retries = ",".join(f"{s.name}={program_timings(served)[s.name].startretries}" for s in served)
    assert words[words.index("--start-retries") + 1] == retries
    # without EXITED a model dying while it loads would be restarted forever (RUNNING after startsecs)
    pool = next(g for g in options.process_group_configs if g.name == "fatal")
    assert EventTypes.PROCESS_STATE_EXITED in pool.pool_events and EventTypes.PROCESS_STATE_FATAL in pool.pool_events
    assert programs[GATEWAY].priority > max(programs[s.name].priority for s in served)


def test_timings_follow_the_profile() -> None:
    served = served_models(CATALOG, CATALOG.profile("tiny-cpu"))
    timings = program_timings(served)
    colds = [s.cold_start for s in served]  # 70, 70, 90
    # RUNNING once the launcher is up (`supervisorctl status` tells the truth once a model serves);
    # an exit while loading is the fatal listener's failed start
    assert [timings[s.name].startsecs for s in served] == [MODEL_STARTSECS] * len(served)
    assert all(timings[s.name].startretries == 3 for s in served)  # 600 s budget / 70-90 s, capped at 3
    assert [timings[s.name].stopwaitsecs for s in served] == [max(10, -(-int(c) // 4)) for c in colds]
    big = served_models(CATALOG, CATALOG.profile("gpu-24gb"))
    for s in big:
        t = program_timings(big)[s.name]
        assert 1 <= t.startretries <= 3 and 10 <= t.stopwaitsecs <= 60
    assert stop_grace_seconds(CATALOG, CATALOG.profile("tiny-cpu")) == sum(t.stopwaitsecs for t in timings.values()) + 5


def test_render_cli_writes_file_and_stdout(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("APPLIANCE_MANIFESTS", None)
    out = tmp_path / "s.conf"
    command = [sys.executable, "-m", "appliance", "render", "--out", str(out), "--models-root", "/srv/m"]
    subprocess.run(command, check=True, env=env, capture_output=True)
    text = out.read_text()
    assert "--model /srv/m/tiny-qwen3-vl " in text
    shown = subprocess.run(
        [sys.executable, "-m", "appliance", "render", "-o", "-"], env=env, capture_output=True, text=True, check=True
    )
    assert shown.stdout == COMMITTED.read_text()
