"""The operator's path on a real Docker Engine (slow; DESIGN §12): the README's operator block run as
written against the tarball `make offline-image` saved — `bundle verify`, `docker load`, `docker run`
with the secrets mounted, HEALTHCHECK healthy, `docker exec … supervisorctl` as typed — then every
engine, the pass-through, auth, a model restart, `docker stop`, a damaged model file, and one
`appliance image build` through the docker builder.

A private dockerd (tests/docker_support.py) has no bridge: `-p 8080:8080` becomes `--network none`
and the README's `curl localhost:8080` runs in the container's network namespace (nsenter).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from appliance.image.proof import cache_report
from appliance.manifest import Catalog
from appliance.runtime.served import served_models
from tests.conftest import REPO
from tests.docker_support import Dockerd, in_netns, private_dockerd
from tests.image_support import main_job_dist

pytestmark = pytest.mark.slow
PROFILE = "tiny-cpu"
IMAGE = f"localhost/ocr-appliance:{PROFILE}"
CATALOG = Catalog(REPO / "manifests")
SERVED = served_models(CATALOG, CATALOG.profile(PROFILE))
ENGINES = [s.name for s in SERVED]  # supervisord programs = /models/<name>
DOTS = next(s.name for s in SERVED if s.engine == "dots-ocr")
BUILD_HOST = ("appliance fetch", "make offline-image")  # done by `make offline-image` for tiny-cpu


@pytest.fixture(scope="module")
def dist() -> Path:
    """The bundle `make offline-image` saved (the README runs it first); made here if missing."""
    return main_job_dist(PROFILE)


@pytest.fixture(scope="module")
def daemon() -> Iterator[Dockerd]:
    with private_dockerd("engine") as daemon:
        yield daemon


# --- the README's operator block, as written --------------------------------------------------------


def operator_commands() -> list[str]:
    """The README's operator block (the ```sh block that runs `docker load`), one command per line."""
    blocks = re.findall(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    block = next(b for b in blocks if "docker load" in b)
    joined = block.replace("\\\n", " ")
    lines = (re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def substitute(command: str, dist: Path) -> tuple[str | None, list[str]]:
    """What this machine cannot honour, replaced; None: a build-host step `make offline-image` did."""
    said: list[str] = []
    if command.startswith(BUILD_HOST):
        return None, [f"build host step done by `make offline-image` for {PROFILE}"]
    out = command

    def swap(old: str, new: str, why: str) -> None:
        nonlocal out
        if old in out:
            out = out.replace(old, new)
            said.append(f"{old!r} → {new!r} ({why})")

    swap("gpu-24gb", PROFILE, "the profile this machine can run")
    swap("/media/usb/dist", str(dist), "the bundle make offline-image saved")
    swap("/etc/appliance/signing.pub", str(REPO / "work/keys/throwaway.key.pub"), "the key make save signed with")
    swap("/var/lib/appliance", "appliance-state", "the operator's own state directory")
    swap("--gpus all ", "", "no GPU here")
    swap("-p 8080:8080", "--network none", "the private dockerd has no bridge")
    swap("restart dots-ocr", f"restart {DOTS}", "the tiny profile's program is named after its tiny model")
    if out.startswith("curl "):
        out = 'nsenter --net=/proc/"$(docker inspect -f {{.State.Pid}} ocr)"/ns/net ' + out
        said.append("curl runs in the container's network namespace (no published port)")
    return out, said


def wait_healthy(daemon: Dockerd, name: str, timeout: float = 900) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        state = json.loads(daemon.docker("inspect", "-f", "{{json .State}}", name).stdout)
        health = (state.get("Health") or {}).get("Status")
        if health == "healthy":
            return time.monotonic() - started
        assert state["Running"], f"{name} exited {state['ExitCode']}:\n{daemon.docker('logs', name).stderr[-4000:]}"
        time.sleep(3)
    raise AssertionError(f"{name} not healthy after {timeout} s:\n{daemon.docker('logs', name).stderr[-4000:]}")


def test_readme_block_is_what_the_test_runs() -> None:
    """The parser sees the whole operator path; a README edit that drops a step fails here."""
    commands = operator_commands()
    kinds = [c.split()[0] + " " + c.split()[1] for c in commands]
    for needed in ("appliance bundle", "docker load", "docker run", "docker exec", "curl -s"):
        assert needed in kinds, (needed, commands)
    run = next(c for c in commands if c.startswith("docker run"))
    for flag in ("--name ocr", "APPLIANCE_API_KEYS_FILE", "APPLIANCE_SUPERVISOR_PASSWORD_FILE", "/run/secrets"):
        assert flag in run
    assert "docker exec ocr supervisorctl status" in commands
    assert "docker exec ocr supervisorctl restart dots-ocr" in commands


@pytest.fixture(scope="module")
def operator(daemon: Dockerd, dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The README's operator block run command by command in an empty directory (the operator's)."""
    cwd = tmp_path_factory.mktemp("operator")
    Image.new("RGB", (320, 200), "white").save(cwd / "page.png")
    env_path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # `appliance` on PATH, as installed
    daemon.env["PATH"] = env_path
    ran_run = False
    try:
        for command in operator_commands():
            script, said = substitute(command, dist)
            print(f"\n$ {command}" + "".join(f"\n  [substituted] {s}" for s in said), file=sys.stderr)
            if script is None:
                continue
            if script.startswith("docker exec") and ran_run:
                ran_run = False
                waited = wait_healthy(daemon, "ocr")  # an operator waits for healthy before checking
                print(f"  [waited] healthy after {waited:.0f} s", file=sys.stderr)
            proc = daemon.run_shell(script, cwd)
            assert proc.returncode == 0, f"README step failed: {script}\n{proc.stdout}\n{proc.stderr}"
            if "supervisorctl status" in script:
                lines = proc.stdout.splitlines()
                for name in [*ENGINES, "gateway"]:
                    assert any(line.split()[:2] == [name, "RUNNING"] for line in lines), proc.stdout
            if script.startswith("curl") or "curl -s" in script:
                print(f"  → {proc.stdout[:200]}", file=sys.stderr)
            ran_run = ran_run or script.startswith("docker run")
        yield cwd
    finally:  # the container's last lines, for a failure's report (pytest shows stderr then)
        logs = daemon.docker("logs", "--tail", "40", "ocr", check=False)
        print(f"\n--- docker logs ocr (tail) ---\n{logs.stdout}{logs.stderr}", file=sys.stderr)


def _curl(daemon: Dockerd, cwd: Path, *args: str) -> tuple[int, str]:
    key = (cwd / "secrets" / "api-keys").read_text().strip()
    cmd = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-H", f"Authorization: Bearer {key}", *args]
    proc = in_netns(daemon, "ocr", cmd)
    body, _, code = proc.stdout.rpartition("\n")
    return int(code or 0), body


def test_operator_path_as_written(daemon: Dockerd, operator: Path) -> None:
    """Ran above, every step exit 0; the restarted model is ready again and the others never stopped."""
    status = daemon.docker("exec", "ocr", "supervisorctl", "status").stdout
    assert all(re.search(rf"^{name}\s+RUNNING", status, re.M) for name in [*ENGINES, "gateway"]), status
    assert set(wait_all_ready(daemon, operator).values()) == {"ready"}  # the optional one too, in time
    # Under Docker Engine too, each model started from its baked compile cache: every graph loaded.
    uses = cache_report(container_log(daemon, "ocr"), ENGINES)
    assert all(use.hit for use in uses.values()), uses


def container_log(daemon: Dockerd, name: str) -> str:
    """The container's stdout and stderr as one log in time order (`docker logs` keeps them apart)."""
    logs = daemon.docker("logs", "--timestamps", name)
    stamped = [line.partition(" ") for text in (logs.stdout, logs.stderr) for line in text.splitlines()]

    def when(stamp: str) -> str:  # RFC 3339 with the fraction's trailing zeros trimmed: pad it back
        seconds, _, fraction = stamp.rstrip("Z").partition(".")
        return seconds + "." + fraction.ljust(9, "0")

    return "\n".join(text for _stamp, _sep, text in sorted(stamped, key=lambda parts: when(parts[0])))


def wait_all_ready(daemon: Dockerd, cwd: Path, timeout: float = 600) -> dict[str, str]:
    """Every model's phase once all are ready (healthy needs only the essential ones)."""
    deadline = time.monotonic() + timeout
    phases: dict[str, str] = {}
    while time.monotonic() < deadline:
        _code, body = _curl(daemon, cwd, "localhost:8080/startupz")
        phases = {m["model"]: m["phase"] for m in json.loads(body)["models"]}
        if set(phases.values()) == {"ready"}:
            break
        time.sleep(3)
    return phases


def test_every_engine_and_the_passthrough_answer(daemon: Dockerd, operator: Path) -> None:
    for served in SERVED:
        engine, name = served.name, served.engine
        code, body = _curl(daemon, operator, "-F", f"file=@{operator / 'page.png'}", "-F", f"engine={name}",
                           "-F", "task=text", "localhost:8080/v1/ocr")  # fmt: skip
        assert code == 200, (engine, body[:500])
        answer = json.loads(body)
        assert answer["engine"] == name and len(answer["pages"]) == 1, body[:500]
    model = json.loads(_curl(daemon, operator, "localhost:8080/v1/models")[1])["data"][0]["id"]
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    code, body = _curl(daemon, operator, "-H", "Content-Type: application/json", "-d", json.dumps(chat),
                       "localhost:8080/v1/chat/completions")  # fmt: skip
    assert code == 200 and json.loads(body)["choices"], body[:500]


def test_a_caller_without_the_key_is_refused(daemon: Dockerd, operator: Path) -> None:
    proc = in_netns(daemon, "ocr", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "localhost:8080/v1/models"])
    assert proc.stdout == "401"
    proc = in_netns(daemon, "ocr", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                                    "Authorization: Bearer wrong", "localhost:8080/v1/models"])  # fmt: skip
    assert proc.stdout == "401"


def test_restart_one_model_others_keep_running(daemon: Dockerd, operator: Path) -> None:
    others = [name for name in ENGINES if name != DOTS]

    def pids() -> dict[str, str]:
        return {name: daemon.docker("exec", "ocr", "supervisorctl", "pid", name).stdout.strip() for name in ENGINES}

    before = pids()
    daemon.docker("exec", "ocr", "supervisorctl", "restart", DOTS)
    deadline = time.monotonic() + 600
    phase = None
    while time.monotonic() < deadline:
        code, body = _curl(daemon, operator, "localhost:8080/startupz")
        phase = {m["model"]: m["phase"] for m in json.loads(body)["models"]}.get(DOTS)
        if code == 200 and phase == "ready":
            break
        time.sleep(2)
    assert phase == "ready", body
    after = pids()
    assert after[DOTS] != before[DOTS]
    assert {n: after[n] for n in others} == {n: before[n] for n in others}, (before, after)


def test_doctor_running_and_stop(daemon: Dockerd, operator: Path) -> None:
    doctor = daemon.docker("exec", "ocr", "appliance", "doctor", "--running", check=False)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    started = time.monotonic()
    daemon.docker("stop", "ocr")  # docker's default grace: 10 s, then SIGKILL (exit 137)
    took = time.monotonic() - started
    code = int(daemon.docker("inspect", "-f", "{{.State.ExitCode}}", "ocr").stdout)
    assert code == 0 and took < 10, (code, took)


def test_a_damaged_model_file_stops_the_container_naming_it(daemon: Dockerd, operator: Path, tmp_path: Path) -> None:
    weights = "model.safetensors"
    copy = tmp_path / weights
    daemon.docker("create", "--name", "source", IMAGE)
    daemon.docker("cp", f"source:/models/{DOTS}/{weights}", str(copy))
    daemon.docker("rm", "source")
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only a hash sees it
    copy.write_bytes(bytes(data))
    copy.chmod(0o644)
    secrets = operator / "secrets"
    daemon.docker(
        "run", "-d", "--name", "damaged", "--network", "none",
        "-v", f"{secrets}:/run/secrets/appliance:ro",
        "-e", "APPLIANCE_API_KEYS_FILE=/run/secrets/appliance/api-keys",
        "-e", "APPLIANCE_SUPERVISOR_PASSWORD_FILE=/run/secrets/appliance/supervisor-password",
        "-v", f"{copy}:/models/{DOTS}/{weights}:ro",
        IMAGE,
    )  # fmt: skip
    code = daemon.docker("wait", "damaged", timeout=600).stdout.strip()
    logs = daemon.docker("logs", "damaged")
    assert code != "0", logs.stdout[-3000:]
    assert re.search(rf"{DOTS}.*{re.escape(weights)}.*sha256", logs.stdout + logs.stderr), logs.stdout[-3000:]


# --- the docker builder ------------------------------------------------------------------------------


def test_image_build_through_the_docker_builder(daemon: Dockerd, dist: Path, tmp_path: Path) -> None:
    """Debian's engine has no buildx: the legacy builder runs, says so, and records it."""
    from appliance.image.bases import CI_BASE_IMAGE

    save = subprocess.Popen(["podman", "save", "--format", "docker-archive", CI_BASE_IMAGE], stdout=subprocess.PIPE)
    load = subprocess.run(["docker", "load"], stdin=save.stdout, env=daemon.env, capture_output=True, text=True)
    assert save.wait() == 0 and load.returncode == 0, load.stderr
    ref = "localhost/ocr-appliance:docker-built"
    store = REPO / "store"
    cmd = [sys.executable, "-m", "appliance", "image", "build", "--profile", PROFILE, "--builder", "docker",
           "--tag", ref, "--store", str(store)]  # fmt: skip
    proc = subprocess.run(cmd, env=daemon.env, capture_output=True, text=True, cwd=REPO, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "legacy builder runs" in proc.stderr and "cannot pin layer timestamps" in proc.stderr
    inspect = json.loads(daemon.docker("image", "inspect", ref).stdout)[0]
    labels = inspect["Config"]["Labels"]
    assert labels["appliance.builder"] == "docker-legacy" and labels["appliance.reproducible-layers"] == "false"
    for model in ENGINES:  # one layer per model, found by the image's label (the build's layer table)
        assert re.search(rf"model\s*│\s*{model}\s*│\s*sha256:", proc.stdout + proc.stderr), proc.stdout
    script = "id -u; appliance verify --deep --profile tiny-cpu; readlink /etc/supervisord.conf"
    out = daemon.docker("run", "--rm", "--network", "none", ref, "sh", "-c", script)
    lines = out.stdout.splitlines()
    assert lines[0] == "10001" and lines[-1] == "/run/appliance/supervisorctl.conf", out.stdout
    assert sum(" ok (" in line for line in lines) == 3, out.stdout
