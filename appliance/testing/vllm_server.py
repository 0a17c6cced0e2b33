"""One real vLLM OpenAI server started by hand (tests and benchmarks): start, wait for /health 200,
always stop its whole process group (the API server, its EngineCore and workers)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance import constants
from appliance.runtime.compile_cache import engine_env

# The appliance's own offline switches, and a small CPU KV cache (tiny models, shared 2-core hosts).
OFFLINE = constants.OFFLINE_ENV | {"VLLM_CPU_KVCACHE_SPACE": "1"}


class ServerError(RuntimeError):
    """The server exited or did not answer /health in time; the message carries its log's tail."""


@dataclass
class VllmServer:
    port: int
    log: Path
    seconds_to_health: float

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log, lines)


def tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def healthy(port: int, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as answer:
            return answer.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextlib.contextmanager
def vllm_server(
    command: Sequence[str], port: int, log: Path, *, env: dict[str, str] | None = None, timeout: float = 300.0
) -> Iterator[VllmServer]:
    """Run `command` (an api_server listening on `port`) until the block ends; raises ServerError
    if it exits or stays unhealthy for `timeout` seconds."""
    # As the launcher starts vLLM on CPU: inductor's own caches (shared by every start of the same
    # graph in this session), their hit/miss lines in the log.
    env = engine_env("cpu") | dict(os.environ if env is None else env)
    with log.open("wb") as out:
        proc = subprocess.Popen(list(command), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = time.monotonic()
        while not healthy(port):
            if proc.poll() is not None:
                raise ServerError(f"vLLM exited with {proc.returncode} before /health answered:\n{tail(log)}")
            if time.monotonic() - started > timeout:
                raise ServerError(f"vLLM /health not 200 after {timeout:.0f} s:\n{tail(log)}")
            time.sleep(0.5)
        yield VllmServer(port, log, time.monotonic() - started)
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """SIGTERM the process group the server leads, SIGKILL after `grace` seconds."""
    with contextlib.suppress(ProcessLookupError):  # also when the leader is gone but its children are not
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
