"""supervisord.conf for a profile (DESIGN §5): one renderer, the committed copy checked by a test.

Every vLLM server runs as `appliance runtime launch <model> -- <python> -m vllm…` so the conf shows
the exact vLLM flags while the launcher verifies the model and gates the start order. The conf
expects the environment `appliance boot` provides (see `CONF_ENV`); supervisord expands
`%(ENV_X)s` when it reads the file and refuses to start if one is missing.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath

from appliance import constants
from appliance.manifest import Catalog, Profile
from appliance.runtime.plan import plan_profile
from appliance.runtime.served import Served, served_models
from appliance.runtime.vllm_args import ENTRYPOINT, MODELS_ROOT, vllm_args

GATEWAY = "gateway"
LISTENER = "fatal"
SOCKET = "supervisor.sock"
PROGRAM_PRIORITY = 100  # models: 100, 101, … in start order
GATEWAY_PRIORITY = 900  # started last, stopped first (supervisord stops in reverse priority)

# Environment variables the rendered conf references; `appliance boot` gives each a value.
CONF_ENV = (
    "APPLIANCE_RUN_DIR",
    "APPLIANCE_SUPERVISOR_USER",
    "APPLIANCE_SUPERVISOR_PASSWORD",
    "APPLIANCE_VLLM_PYTHON",
    "HF_HOME",
    "VLLM_CACHE_ROOT",
)

# --- timings ------------------------------------------------------------------------------------
# startsecs: supervisord calls a program RUNNING once it stayed up startsecs, and an exit before that
#   a failed start (retried startretries times, then FATAL). A vLLM server loads for minutes, and
#   `supervisorctl status` must not say STARTING for all that while /startupz says ready; so a
#   model is RUNNING after MODEL_STARTSECS (its launcher is up: verified, waiting or loading — the
#   phase says which), and an exit while still loading is counted as a failed start by the fatal
#   listener instead (PROCESS_STATE_EXITED before `ready`, `--start-retries`), which ends the
#   appliance as a FATAL would.
MODEL_STARTSECS = 5
# startretries: each retry can cost up to a cold start. Keep the time until a broken model is
#   declared failed near FATAL_BUDGET seconds, but retry at least once (a transient failure) and at
#   most MAX_RETRIES times (a start that failed four times will not work on the fifth).
FATAL_BUDGET = 600
MAX_RETRIES = 3
# stopwaitsecs: SIGTERM to SIGKILL of the whole process group. vLLM's shutdown tears down what
#   start-up built (engine core, workers, KV cache), so it scales with the cold start: a quarter of
#   it (a tiny CPU model's group is gone ~2 s after SIGTERM, of a 30-75 s start), within [STOP_MIN, STOP_MAX]. A stop
#   walks programs one after another, so the container's stop grace must cover the sum
#   (`stop_grace_seconds`).
STOP_FRACTION, STOP_MIN, STOP_MAX = 0.25, 10, 60
GATEWAY_STARTSECS, GATEWAY_RETRIES, GATEWAY_STOPWAIT = 5, 3, 10


@dataclass(frozen=True)
class Timings:
    startsecs: int
    startretries: int
    stopwaitsecs: int


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def program_timings(order: list[Served]) -> dict[str, Timings]:
    """supervisord timings of every served model (start order given) plus the gateway."""
    timings: dict[str, Timings] = {}
    for served in order:
        timings[served.name] = Timings(
            startsecs=MODEL_STARTSECS,
            startretries=_clamp(int(FATAL_BUDGET // served.cold_start) - 1, 1, MAX_RETRIES),
            stopwaitsecs=_clamp(math.ceil(STOP_FRACTION * served.cold_start), STOP_MIN, STOP_MAX),
        )
    timings[GATEWAY] = Timings(GATEWAY_STARTSECS, GATEWAY_RETRIES, GATEWAY_STOPWAIT)
    return timings


def stop_grace_seconds(catalog: Catalog, profile: Profile) -> int:
    """How long a container stop may take (docker stop -t, terminationGracePeriodSeconds)."""
    return sum(t.stopwaitsecs for t in program_timings(served_models(catalog, profile)).values()) + 5


# --- rendering ----------------------------------------------------------------------------------


def _literal(text: str) -> str:
    """Escape text for supervisord's %-expansion."""
    return text.replace("%", "%%")


def _environment(env: dict[str, str]) -> str:
    return ",".join(f'{key}="{value}"' for key, value in env.items())


def device_env(profile: Profile) -> dict[str, str]:
    if profile.target.device == "cpu":
        # vLLM's CPU backend sizes its KV cache from this (GiB), not from a memory fraction.
        return {"VLLM_CPU_KVCACHE_SPACE": str(profile.target.cpu_kvcache_gib)}
    # CUDA: the memory share is --gpu-memory-utilization from the plan; nothing to add here.
    return {}


def _logs() -> list[str]:
    return [
        "stdout_logfile=/dev/fd/1",
        "stdout_logfile_maxbytes=0",
        "stderr_logfile=/dev/fd/2",
        "stderr_logfile_maxbytes=0",
    ]


def _program(name: str, command: str, priority: int, timing: Timings, env: dict[str, str]) -> list[str]:
    return [
        f"[program:{name}]",
        f"command={command}",
        f"priority={priority}",
        "autostart=true",
        "autorestart=true",
        f"startsecs={timing.startsecs}",
        f"startretries={timing.startretries}",
        f"stopwaitsecs={timing.stopwaitsecs}",
        # vLLM's EngineCore and workers are children of the API server: signal (and kill) the whole
        # group, or they outlive it holding (GPU) memory.
        "stopasgroup=true",
        "killasgroup=true",
        *_logs(),
        f"environment={_environment(env)}",
    ]


def render_supervisord_conf(catalog: Catalog, profile: Profile, models_root: PurePosixPath = MODELS_ROOT) -> str:
    """The supervisord.conf text for `profile`, models served from `models_root/<name>`."""
    order = served_models(catalog, profile)
    plan = plan_profile(catalog, profile)
    timings = program_timings(order)
    essential = sorted([s.name for s in order if s.essential] + [GATEWAY])
    retries = ",".join(f"{s.name}={timings[s.name].startretries}" for s in order)
    run = "%(ENV_APPLIANCE_RUN_DIR)s"
    credentials = ["username=%(ENV_APPLIANCE_SUPERVISOR_USER)s", "password=%(ENV_APPLIANCE_SUPERVISOR_PASSWORD)s"]
    offline = dict(constants.OFFLINE_ENV)
    lines = [
        f"; Rendered by `appliance render --profile {profile.name}`: do not edit, re-render.",
        "; Started by `appliance boot` (the container entrypoint), which sets every ENV_ variable used here.",
        "; Each model: `appliance runtime launch` verifies /models/<name> against its lock, waits until the",
        "; previous model answers /health, then execs the vLLM command shown. Phases: <run dir>/phases/.",
        "; Operator: docker exec CONTAINER supervisorctl status   (/etc/supervisord.conf points at the run dir's",
        "; supervisorctl.conf, which `appliance boot` writes with this boot's credentials)",
        "",
        "[supervisord]",
        "nodaemon=true",
        "; nodaemon logs to stdout already; a log file would only duplicate (and rotate) it",
        "logfile=/dev/null",
        "logfile_maxbytes=0",
        f"pidfile={run}/supervisord.pid",
        "",
        "[unix_http_server]",
        f"file={run}/{SOCKET}",
        "chmod=0700",
        *credentials,
        "",
        "[supervisorctl]",
        f"serverurl=unix://{run}/{SOCKET}",
        *credentials,
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
    ]
    for index, served in enumerate(order):
        args = vllm_args(served.manifest, profile, served.entry, plan.fraction(served.name), models_root)
        server = " ".join(["%(ENV_APPLIANCE_VLLM_PYTHON)s", *ENTRYPOINT, *(_literal(shlex.quote(a)) for a in args)])
        env = offline | {"HF_HOME": "%(ENV_HF_HOME)s", "VLLM_CACHE_ROOT": "%(ENV_VLLM_CACHE_ROOT)s"}
        env |= device_env(profile)
        t = timings[served.name]
        lines += [
            f"; {'essential' if served.essential else 'optional'}, port {served.port}, measured cold start "
            f"{served.cold_start:g} s",
            *_program(
                served.name,
                f"appliance runtime launch {served.name} -- {server}",
                PROGRAM_PRIORITY + index,
                t,
                env,
            ),
            "",
        ]
    gateway_command = f"appliance gateway serve --port {profile.gateway_port}"
    lines += [
        "; /livez /readyz /startupz and (later) the OCR API",
        *_program(GATEWAY, gateway_command, GATEWAY_PRIORITY, timings[GATEWAY], offline),
        "",
        "; An essential program going FATAL, or a model exiting before ready more than its startretries,",
        "; stops supervisord; `appliance boot` then exits non-zero.",
        f"[eventlistener:{LISTENER}]",
        f"command=appliance runtime fatal-listener --essential {','.join(essential)} --start-retries {retries}",
        "events=PROCESS_STATE_FATAL,PROCESS_STATE_EXITED",
        "autostart=true",
        "autorestart=true",
        "; stdout carries the event protocol",
        "stdout_logfile=NONE",
        "stderr_logfile=/dev/fd/2",
        "stderr_logfile_maxbytes=0",
        "",
    ]
    return "\n".join(lines)
