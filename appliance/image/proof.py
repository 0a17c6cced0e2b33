"""The air-gap proof: boot a built image's filesystem with no network at all, wait until it is
ready, read one page with every engine through the gateway (and one more with layout on for each
model that has a layout model: the Paddle layout model in the gateway, then one VL request per
region), and count every non-loopback connection attempt any process made (there must be none).

How: `buildah from` the image, then run its entrypoint (`tini -- appliance boot`) with
`buildah run --isolation chroot` inside a fresh network namespace that holds only loopback
(`unshare --net`), the whole process tree under `strace -f` recording every connect/sendto/sendmsg
(`appliance.image.airgap`). Requests enter that namespace with `nsenter`; the image's own ENV
(offline switches, profile) applies, as under `docker run`.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from appliance.errors import ApplianceError
from appliance.image.airgap import Attempt, non_loopback, parse, strace_prefix
from appliance.manifest import Catalog, Profile
from appliance.runtime.served import served_models

CLIENT = r"""
import json, sys, urllib.request
url, key, body = sys.argv[1], sys.argv[2], sys.stdin.read()
request = urllib.request.Request(url, data=body.encode() or None, method="POST" if body else "GET")
request.add_header("Authorization", "Bearer " + key)
request.add_header("Content-Type", "application/json")
try:
    with urllib.request.urlopen(request, timeout=float(sys.argv[3])) as answer:
        print(json.dumps({"status": answer.status, "body": json.loads(answer.read() or b"null")}))
except urllib.error.HTTPError as error:
    print(json.dumps({"status": error.code, "body": error.read().decode(errors="replace")[:500]}))
except Exception as error:
    print(json.dumps({"status": None, "body": f"{type(error).__name__}: {error}"}))
"""


class ProofError(ApplianceError):
    pass


@dataclass
class ProofResult:
    image: str
    seconds_to_ready: float
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # engine -> summary
    inet_syscalls: int = 0
    attempts: list[Attempt] = field(default_factory=list)  # non-loopback ones
    caches: dict[str, CacheUse] = field(default_factory=dict)  # warmed model → how its start used its cache

    @property
    def ok(self) -> bool:
        return not self.attempts and not self.failed()

    def failed(self) -> list[str]:
        failed = [name for name, a in self.answers.items() if a["status"] != 200 or a["error"]]
        return failed + [f"{model} (compile cache unused)" for model, use in self.caches.items() if not use.hit]


@dataclass(frozen=True)
class CacheUse:
    launcher: str  # the launcher's "compile cache: warm|cold (…)" line
    loads: list[str]  # lines of this start saying a compiled graph came from the cache
    compiles: list[str] = field(default_factory=list)  # lines saying a graph was compiled (a miss)

    @property
    def hit(self) -> bool:
        """Warm by the launcher, and every graph of the start loaded: at least one, none compiled."""
        return self.launcher.startswith("compile cache: warm") and bool(self.loads) and not self.compiles


_LAUNCHER_CACHE = re.compile(r"\[launch (?P<model>[^\]]+)\] (?P<detail>compile cache: .*)")
# What a start's log says of each compiled graph: torch's own lines (TORCH_LOGS, set by the launcher:
# compile_cache.engine_env) — on CPU these are the whole story, vLLM's AOT path being off there —
# and vLLM's AOT lines (vllm/compilation/decorators.py), the GPU path.
CACHE_LOADED = ("fx graph cache hit for key", "AOTAutograd cache hit for key", "Directly load AOT compilation")
CACHE_COMPILED = ("fx graph cache miss for key", "AOTAutograd cache miss for key",
                  "Compiling model again due to a load failure")  # fmt: skip


# vLLM's worker names the model it loads ("(Worker pid=59) INFO … Starting to load model /models/m...");
# torch's lines carry the same pid in glog style ("[rank0]:I1202 02:01:20.318000 59 torch/…").
_LOADING = re.compile(r"\((?:[\w-]+) pid=(?P<pid>\d+)\).*Starting to load model (?P<path>\S+)")
_VLLM_PID = re.compile(r"\((?:[\w-]+) pid=(?P<pid>\d+)\)")
_TORCH_PID = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+(?P<pid>\d+) ")


def _pid(line: str) -> str | None:
    found = _TORCH_PID.search(line) or _VLLM_PID.search(line)
    return found["pid"] if found else None


def start_logs(log: str, model: str) -> list[str]:
    """The log of each start of `model`, oldest first: its launcher's compile-cache line, then the
    lines of the vLLM process that loaded this model (by pid, from its "Starting to load model" line
    to the model's next start) — other models' lines interleave when one restarts while another
    is still starting."""
    lines = log.splitlines()
    launches = [i for i, line in enumerate(lines) if (m := _LAUNCHER_CACHE.search(line)) and m["model"] == model]
    starts = []
    for n, at in enumerate(launches):
        until = launches[n + 1] if n + 1 < len(launches) else len(lines)
        loading = next(((i, found["pid"]) for i in range(at, until) if (found := _LOADING.search(lines[i]))
                        and PurePosixPath(found["path"].rstrip(".")).name == model), None)  # fmt: skip
        own = [lines[i] for i in range(loading[0], until) if _pid(lines[i]) == loading[1]] if loading else []
        starts.append("\n".join([lines[at], *own]))
    return starts


def cache_use(start_log: str) -> CacheUse:
    """How one start used its compile cache, from its own log (start_logs)."""
    lines = start_log.splitlines()
    launcher = _LAUNCHER_CACHE.search(lines[0]) if lines else None
    return CacheUse(
        launcher["detail"] if launcher else "compile cache: (no launcher line)",
        [line.strip() for line in lines if any(mark in line for mark in CACHE_LOADED)],
        [line.strip() for line in lines if any(mark in line for mark in CACHE_COMPILED)],
    )


def cache_report(log: str, models: list[str]) -> dict[str, CacheUse]:
    """How each warmed model's (latest) start used its baked compile cache, from the boot log."""
    return {model: cache_use((start_logs(log, model) or [""])[-1]) for model in models}


def _page_png(size: tuple[int, int] = (320, 120)) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).text((10, 40), "Air-gapped OCR appliance", fill="black")
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


class ImageBoot:
    """One offline boot of an image; a context manager that always cleans up."""

    def __init__(
        self, image: str, work: Path, profile: Profile, *, trace: bool = True, devices: tuple[str, ...] = ()
    ) -> None:
        """`trace=False` boots without the strace witness (the time-to-ready benchmark, warming);
        `devices` go to `buildah run --device` (a GPU profile: the CDI name of the host's GPUs)."""
        self.image, self.work, self.profile, self.traced = image, work, profile, trace
        self.devices = devices
        self.key = secrets.token_urlsafe(16)
        self.trace = work / "strace.log"
        self.log = work / "boot.log"
        self.container: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ImageBoot:
        self.work.mkdir(parents=True, exist_ok=True)
        made = subprocess.run(["buildah", "from", "--pull-never", self.image], capture_output=True, text=True)
        if made.returncode != 0:
            raise ProofError(f"buildah from {self.image} failed: {made.stderr.strip()}")
        self.container = made.stdout.strip().splitlines()[-1]
        devices = [flag for device in self.devices for flag in ("--device", device)]
        run = ["buildah", "run", "--isolation", "chroot", "--env", f"APPLIANCE_API_KEYS={self.key}", *devices,
               self.container, "--", "/usr/local/bin/tini", "--", "appliance", "boot"]  # fmt: skip
        command = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                   *(strace_prefix(self.trace) if self.traced else []), *run]  # fmt: skip
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(30)
            self._end_session()
        if self.container:
            subprocess.run(["buildah", "rm", self.container], capture_output=True)

    def _session(self) -> list[int]:
        """Every live process still in the boot's session (the Popen child leads it); zombies are
        dead already, whoever reaps orphans on this host will."""
        assert self.proc is not None
        left = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError, IndexError):
                    if os.getsid(int(entry.name)) != self.proc.pid:
                        continue
                    if (entry / "stat").read_text().rpartition(")")[2].split()[0] != "Z":
                        left.append(int(entry.name))
        return left

    def _end_session(self, grace: float = 30.0) -> None:
        """`buildah run --isolation chroot` has no PID namespace, and tini puts the appliance in a process
        group of its own: killing buildah's group leaves supervisord and the vLLM servers running, orphaned
        (gigabytes each, for the rest of the host's life). End whatever is left of the session: TERM,
        then KILL after `grace` seconds."""
        deadline = time.monotonic() + grace
        signum = signal.SIGTERM
        while left := self._session():
            if time.monotonic() > deadline:
                signum = signal.SIGKILL
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
            time.sleep(0.5)
            if signum == signal.SIGKILL and time.monotonic() > deadline + 10:
                break  # a process stuck in the kernel (D state): nothing more to do from here

    def request(self, path: str, body: dict[str, Any] | None = None, timeout: float = 300) -> dict[str, Any]:
        """HTTP to the gateway from inside the namespace (a child entering it with nsenter)."""
        assert self.proc is not None
        url = f"http://127.0.0.1:{self.profile.gateway_port}{path}"
        command = ["nsenter", f"--net=/proc/{self.proc.pid}/ns/net", "--", sys.executable, "-c", CLIENT,
                   url, self.key, str(timeout)]  # fmt: skip
        done = subprocess.run(command, input=json.dumps(body) if body else "", capture_output=True, text=True,
                              timeout=timeout + 30)  # fmt: skip
        if done.returncode != 0:
            raise ProofError(f"client in the namespace failed: {done.stderr.strip()[-500:]}")
        return json.loads(done.stdout)

    def wait_ready(self, timeout: float, poll: float = 2.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc is not None and self.proc.poll() is not None:
                raise ProofError(f"the appliance exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                answer = self.request("/readyz", timeout=5)
            except subprocess.TimeoutExpired:  # an overloaded host: not an answer yet, ask again
                continue
            body = answer["body"] if isinstance(answer["body"], dict) else {}
            if answer["status"] == 200 and not body.get("degraded"):  # optional engines too
                return time.monotonic() - started
            time.sleep(poll)
        raise ProofError(f"not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The first error lines (the root cause is usually far above the end), then the tail."""
        text = self.log.read_text(errors="replace").splitlines()
        errors = [line for line in text if "Error" in line and "File " not in line][:25]
        return "\n".join(["-- first errors --", *errors, "-- last lines --", *text[-lines:]])


def _summary(answer: dict[str, Any]) -> dict[str, Any]:
    body = answer["body"] if isinstance(answer["body"], dict) else {}
    pages = body.get("pages", [])
    return {
        "status": answer["status"],
        "model": body.get("model"),
        "pages": len(pages),
        "markdown_chars": len(body.get("markdown", "")),
        "regions": [b.get("category") for p in pages for b in p.get("blocks", [])],
        "error": None if answer["status"] == 200 else str(answer["body"])[:300],
    }


def read_pages(boot: ImageBoot, catalog: Catalog, profile: Profile) -> dict[str, dict[str, Any]]:
    """One page per engine, and one with layout on per engine that has a layout model: engine → summary."""
    served = served_models(catalog, profile)
    engines = sorted({s.engine for s in served})
    with_layout = sorted({s.engine for s in served if s.manifest.layout is not None})
    page = base64.b64encode(_page_png()).decode()
    document = base64.b64encode(_page_png((560, 400))).decode()  # regions tall enough to crop
    answers = {}
    for engine in engines:
        answers[engine] = _summary(boot.request("/v1/ocr", {"file": page, "engine": engine, "task": "text"}))
    for engine in with_layout:
        answer = _summary(boot.request("/v1/ocr", {"file": document, "engine": engine, "task": "layout"}))
        if answer["status"] == 200 and len(set(answer["regions"])) < 2:  # one region: layout did not run
            answer["error"] = f"layout on, but the page came back as {answer['regions']}"
        answers[f"{engine} layout"] = answer
    return answers


def prove(image: str, catalog: Catalog, profile: Profile, work: Path, timeout: float = 1200) -> ProofResult:
    from appliance.image.warm import image_warm_models

    warmed = image_warm_models(image)  # a warmed image's models must start from their baked caches
    with ImageBoot(image, work, profile) as boot:
        result = ProofResult(image, boot.wait_ready(timeout))
        result.answers = read_pages(boot, catalog, profile)
    if warmed:
        result.caches = cache_report(boot.log.read_text(errors="replace"), warmed)
    text = boot.trace.read_text(errors="replace")
    result.inet_syscalls = len(parse(text))
    result.attempts = non_loopback(text)
    return result
