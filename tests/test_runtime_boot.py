"""`appliance boot`: credentials, the operator's supervisorctl.conf, and — with a real supervisord on
trivial programs (seconds, no vLLM) — the exit status: 0 on SIGTERM, 3 when an essential program
goes FATAL, unaffected by an optional one."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.runtime.boot import BootError, boot_env, credentials, prepare
from tests.conftest import REPO


def test_generated_password_is_kept_across_boots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPLIANCE_SUPERVISOR_PASSWORD_FILE", raising=False)
    run = tmp_path / "run"
    conf, _ = prepare("tiny-cpu", None, run)
    ctl = run / "supervisorctl.conf"
    assert stat.S_IMODE(ctl.stat().st_mode) == 0o600
    text = ctl.read_text()
    assert f"serverurl=unix://{run}/supervisor.sock" in text and "username=appliance" in text
    password = credentials(run)[1]
    assert len(password) >= 24 and f"password={password}" in text
    prepare("tiny-cpu", None, run)  # second boot of the same container: same password
    assert credentials(run)[1] == password
    assert conf == run / "supervisord.conf" and "[program:tiny-qwen3-vl]" in conf.read_text()


def test_password_from_mounted_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "secret"
    secret.write_text("p%ss w0rd\n")
    monkeypatch.setenv("APPLIANCE_SUPERVISOR_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("APPLIANCE_SUPERVISOR_USER", "ops")
    run = tmp_path / "run"
    prepare("tiny-cpu", None, run)
    assert credentials(run) == ("ops", "p%ss w0rd")
    assert "password=p%%ss w0rd" in (run / "supervisorctl.conf").read_text()  # %-escaped for supervisorctl
    secret.write_text("")
    with pytest.raises(BootError, match="one non-empty line"):
        credentials(run)
    secret.unlink()
    with pytest.raises(BootError, match="cannot read"):
        credentials(run)


def test_env_defaults_for_the_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setenv("VLLM_CACHE_ROOT", "/keep/me")
    env = boot_env(tmp_path, "tiny-cpu", "u", "p")
    assert env["HF_HOME"] == str(tmp_path / "hf") and env["VLLM_CACHE_ROOT"] == "/keep/me"
    assert env["APPLIANCE_RUN_DIR"] == str(tmp_path) and env["APPLIANCE_PROFILE"] == "tiny-cpu"
    assert env["APPLIANCE_SUPERVISOR_PASSWORD"] == "p" and env["HF_HUB_OFFLINE"] == "1"
    from appliance.runtime.supervisor import CONF_ENV

    assert all(env.get(key) for key in CONF_ENV)


# --- real supervisord, trivial programs --------------------------------------------------------------

CONF = """
[supervisord]
nodaemon=true
logfile=/dev/null
logfile_maxbytes=0
pidfile=%(ENV_APPLIANCE_RUN_DIR)s/supervisord.pid

[unix_http_server]
file=%(ENV_APPLIANCE_RUN_DIR)s/supervisor.sock
chmod=0700
username=%(ENV_APPLIANCE_SUPERVISOR_USER)s
password=%(ENV_APPLIANCE_SUPERVISOR_PASSWORD)s

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[program:sleeper]
command=sleep 300
stopasgroup=true
killasgroup=true
{extra}
[eventlistener:fatal]
command=appliance runtime fatal-listener --essential sleeper,broken
events=PROCESS_STATE_FATAL
stdout_logfile=NONE
stderr_logfile=/dev/fd/2
stderr_logfile_maxbytes=0
"""

BROKEN = """
[program:{name}]
command=sh -c "exit 1"
startsecs=1
startretries=1
"""


def _boot(tmp_path: Path, extra: str) -> subprocess.Popen[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "appliance"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m appliance "$@"\n')
    wrapper.chmod(0o755)
    conf = tmp_path / "supervisord.conf"
    conf.write_text(CONF.format(extra=extra))
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", APPLIANCE_RUN_DIR=str(tmp_path / "run"))
    env.pop("APPLIANCE_SUPERVISOR_PASSWORD_FILE", None)
    return subprocess.Popen(
        [str(wrapper), "boot", "--conf", str(conf)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"appliance boot still running after {timeout} s:\n{out}")
    return proc.returncode, out


def test_essential_fatal_exits_non_zero(tmp_path: Path) -> None:
    started = time.monotonic()
    code, out = _finish(_boot(tmp_path, BROKEN.format(name="broken")), 60)
    assert code == 3, out
    assert "error: appliance stopped: broken went FATAL" in out
    assert time.monotonic() - started < 30  # 2 tries of a 1 s start, then shutdown


def test_optional_fatal_keeps_running_and_sigterm_exits_zero(tmp_path: Path) -> None:
    proc = _boot(tmp_path, BROKEN.format(name="optional"))
    socket = tmp_path / "run" / "supervisor.sock"
    deadline = time.monotonic() + 30
    while not socket.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stat.S_IMODE(socket.stat().st_mode) == 0o700
    ctl = [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(tmp_path / "run" / "supervisorctl.conf")]
    status = ""
    while "FATAL" not in status and time.monotonic() < deadline:
        time.sleep(0.5)
        status = subprocess.run([*ctl, "status", "optional"], capture_output=True, text=True).stdout
    assert "FATAL" in status
    time.sleep(2)  # the listener has heard it; the appliance stays up
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)  # what tini forwards on `docker stop`
    code, out = _finish(proc, 30)
    assert "gave up: optional entered FATAL state" in out and "optional went FATAL" in out
    assert code == 0, out
