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
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
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

    @property
    def ok(self) -> bool:
        return not self.attempts and not self.failed()

    def failed(self) -> list[str]:
        return [name for name, a in self.answers.items() if a["status"] != 200 or a["error"]]


def _page_png(size: tuple[int, int] = (320, 120)) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).text((10, 40), "Air-gapped OCR appliance", fill="black")
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


class ImageBoot:
    """One offline boot of an image; a context manager that always cleans up."""

    def __init__(self, image: str, work: Path, profile: Profile, *, trace: bool = True) -> None:
        """`trace=False` boots without the strace witness (the time-to-ready benchmark)."""
        self.image, self.work, self.profile, self.traced = image, work, profile, trace
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
        run = ["buildah", "run", "--isolation", "chroot", "--env", f"APPLIANCE_API_KEYS={self.key}",
               self.container, "--", "/usr/local/bin/tini", "--", "appliance", "boot"]  # fmt: skip
        command = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                   *(strace_prefix(self.trace) if self.traced else []), *run]  # fmt: skip
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        if self.container:
            subprocess.run(["buildah", "rm", self.container], capture_output=True)

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
            answer = self.request("/readyz", timeout=5)
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


def prove(image: str, catalog: Catalog, profile: Profile, work: Path, timeout: float = 1200) -> ProofResult:
    served = served_models(catalog, profile)
    engines = sorted({s.engine for s in served})
    with_layout = sorted({s.engine for s in served if s.manifest.layout is not None})
    page = base64.b64encode(_page_png()).decode()
    document = base64.b64encode(_page_png((560, 400))).decode()  # regions tall enough to crop
    with ImageBoot(image, work, profile) as boot:
        result = ProofResult(image, boot.wait_ready(timeout))
        for engine in engines:
            result.answers[engine] = _summary(boot.request("/v1/ocr", {"file": page, "engine": engine, "task": "text"}))
        for engine in with_layout:
            answer = _summary(boot.request("/v1/ocr", {"file": document, "engine": engine, "task": "layout"}))
            if answer["status"] == 200 and len(set(answer["regions"])) < 2:  # one region: layout did not run
                answer["error"] = f"layout on, but the page came back as {answer['regions']}"
            result.answers[f"{engine} layout"] = answer
    text = boot.trace.read_text(errors="replace")
    result.inet_syscalls = len(parse(text))
    result.attempts = non_loopback(text)
    return result
