"""`appliance boot`: the container entrypoint (under tini).

Prepares the run dir and the control-socket credentials, runs supervisord as a child (forwarding
SIGTERM/SIGINT), and turns an essential program's FATAL — which supervisord answers with a plain,
exit-0 shutdown — into a non-zero exit.
"""

from __future__ import annotations

import configparser
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from appliance import constants
from appliance.errors import ApplianceError
from appliance.manifest import Catalog
from appliance.runtime import phases
from appliance.runtime.fatal import fatal_path, read_fatal
from appliance.runtime.supervisor import SOCKET, render_supervisord_conf

CTL_CONF = "supervisorctl.conf"  # appliance.image.layout.CTL_DEFAULT points here
FORWARDED = (signal.SIGTERM, signal.SIGINT)


class BootError(ApplianceError):
    """The appliance cannot be started (credentials, configuration)."""


class EssentialFatalError(ApplianceError):
    """An essential program went FATAL; supervisord was shut down by the fatal listener."""

    exit_code = 3


def log(message: str) -> None:
    sys.stderr.write(f"[boot] {message}\n")
    sys.stderr.flush()


def write_private(path: Path, text: str) -> None:
    """Write a 0600 file atomically (it never exists with wider permissions, not even briefly)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:  # mkstemp creates it 0600
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _previous_password(ctl_conf: Path) -> str | None:
    parser = configparser.RawConfigParser()
    try:
        parser.read(ctl_conf, encoding="utf-8")
        value = parser.get("supervisorctl", "password", fallback=None)
    except (OSError, configparser.Error):
        return None
    return value.replace("%%", "%") if value else None


def credentials(run_dir: Path) -> tuple[str, str]:
    """(user, password): the mounted secret if there is one, else the password generated at first
    boot (kept in the run dir's supervisorctl.conf), else a new random one."""
    user = constants.supervisor_user()
    secret = constants.supervisor_password_file()
    if secret is not None:
        try:
            password = secret.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise BootError(f"APPLIANCE_SUPERVISOR_PASSWORD_FILE={secret}: cannot read it: {exc.strerror}") from None
        if not password or "\n" in password:
            raise BootError(f"APPLIANCE_SUPERVISOR_PASSWORD_FILE={secret}: expected one non-empty line")
        return user, password
    return user, _previous_password(run_dir / CTL_CONF) or secrets.token_urlsafe(24)


def ctl_conf_text(run_dir: Path, user: str, password: str) -> str:
    def escape(value: str) -> str:  # supervisorctl %-expands its values
        return value.replace("%", "%%")

    return (
        "; For the operator: supervisorctl -c THIS_FILE status (written by `appliance boot`, mode 0600)\n"
        "[supervisorctl]\n"
        f"serverurl=unix://{escape(str(run_dir / SOCKET))}\n"
        f"username={escape(user)}\n"
        f"password={escape(password)}\n"
    )


def boot_env(run_dir: Path, profile: str, user: str, password: str) -> dict[str, str]:
    """supervisord's environment: ours, plus a value for every variable the conf references."""
    env = dict(os.environ)
    for key, value in constants.OFFLINE_ENV.items():
        env.setdefault(key, value)
    env.setdefault("HF_HOME", str(run_dir / "hf"))
    env.setdefault("VLLM_CACHE_ROOT", str(run_dir / "vllm-cache"))
    env.setdefault("APPLIANCE_MANIFESTS", str(constants.manifests_dir()))
    env.setdefault("APPLIANCE_VLLM_PYTHON", constants.vllm_python())
    env |= {
        "APPLIANCE_RUN_DIR": str(run_dir),
        "APPLIANCE_PROFILE": profile,
        "APPLIANCE_SUPERVISOR_USER": user,
        "APPLIANCE_SUPERVISOR_PASSWORD": password,
    }
    return env


def prepare(profile: str, conf: Path | None, run_dir: Path) -> tuple[Path, dict[str, str]]:
    """Run dir, credentials, operator's supervisorctl.conf, the conf to run; returns (conf, env)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    phases.clear(run_dir)
    fatal_path(run_dir).unlink(missing_ok=True)
    user, password = credentials(run_dir)
    write_private(run_dir / CTL_CONF, ctl_conf_text(run_dir, user, password))
    env = boot_env(run_dir, profile, user, password)
    conf = conf or constants.supervisord_conf()
    if conf is None:
        catalog = Catalog(Path(env["APPLIANCE_MANIFESTS"]))
        conf = run_dir / "supervisord.conf"
        conf.write_text(render_supervisord_conf(catalog, catalog.profile(profile)), encoding="utf-8")
    elif not conf.is_file():
        raise BootError(f"supervisord configuration {conf} does not exist")
    return conf, env


def boot(profile: str | None = None, conf: Path | None = None, run_dir: Path | None = None) -> int:
    """Run supervisord to the end; its exit status, or EssentialFatalError."""
    run_dir = run_dir or constants.run_dir()
    profile = profile or constants.profile_name()
    conf, env = prepare(profile, conf, run_dir)
    log(f"profile {profile}, run dir {run_dir}, conf {conf}")
    log(f"control: supervisorctl status (or: supervisorctl -c {run_dir / CTL_CONF} status)")
    relay = _stdio_relay()
    streams = {"stdout": relay.write_end, "stderr": relay.write_end} if relay else {}
    proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)], env=env, **streams)
    if relay:
        relay.start()

    def forward(signum: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if relay:
        relay.join(timeout=5)  # an orphan still holding the pipe must not hold up the exit
    fatal = read_fatal(run_dir)
    if fatal is not None:
        raise EssentialFatalError(f"appliance stopped: {fatal.get('reason', fatal)}")
    if code < 0:
        return 128 - code
    return code


class _Relay(threading.Thread):
    """Copies a pipe this user owns to our stdout."""

    def __init__(self) -> None:
        super().__init__(name="stdio-relay", daemon=True)
        self.read_end, self.write_end = os.pipe()

    def start(self) -> None:
        os.close(self.write_end)  # the child holds it; EOF once supervisord and its programs exit
        super().start()

    def run(self) -> None:
        out = sys.stdout.fileno()
        while chunk := os.read(self.read_end, 65536):
            os.write(out, chunk)
        os.close(self.read_end)


def _stdio_relay() -> _Relay | None:
    """supervisord logs programs to /dev/fd/1 and /dev/fd/2, which *re-opens* our stdout by path. That
    works for the pipes docker/runc hand over (chowned to the container's user), but not for stdio
    owned by another user — a root-owned log file or pipe under `buildah run`, a service manager:
    EACCES, and every program FATAL. Then relay through a pipe of our own."""
    for fd in (1, 2):
        try:
            os.close(os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_APPEND))
        except OSError:
            log(f"stdio fd {fd} cannot be re-opened by this user: relaying program logs through a pipe")
            return _Relay()
    return None
