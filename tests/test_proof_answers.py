"""The air-gap proof's requests and verdicts, with the boot replaced (the real boot: test_image_build)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from appliance.image import proof
from appliance.manifest import Catalog
from tests.conftest import REPO

LAYOUT = ["title", "text", "table", "display_formula", "image", "text"]


class FakeBoot:
    """Answers like a booted tiny-cpu image; `layout_regions` is what a layout request gets back."""

    layout_regions: ClassVar[list[str]] = LAYOUT
    asked: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, image: str, work: Path, profile: Any) -> None:
        self.trace = work / "strace.log"
        work.mkdir(parents=True, exist_ok=True)
        self.trace.write_text("")

    def __enter__(self) -> FakeBoot:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def wait_ready(self, timeout: float) -> float:
        return 1.0

    def request(self, path: str, body: dict[str, Any] | None = None, timeout: float = 300) -> dict[str, Any]:
        assert path == "/v1/ocr" and body is not None
        self.asked.append(body)
        regions = self.layout_regions if body["task"] == "layout" else ["text"]
        page = {"blocks": [{"category": c} for c in regions]}
        return {"status": 200, "body": {"model": "m", "markdown": "x", "pages": [page]}}


@pytest.mark.parametrize(("regions", "ok"), [(LAYOUT, True), (["text"], False)])
def test_the_proof_reads_a_page_with_layout_on(
    regions: list[str], ok: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proof, "ImageBoot", FakeBoot)
    monkeypatch.setattr(FakeBoot, "layout_regions", regions)
    monkeypatch.setattr(FakeBoot, "asked", [])
    catalog = Catalog(REPO / "manifests")
    result = proof.prove("img", catalog, catalog.profile("tiny-cpu"), tmp_path)
    assert [(b["engine"], b["task"]) for b in FakeBoot.asked] == [
        ("dots-ocr", "text"), ("paddleocr-vl", "text"), ("qwen3-vl", "text"), ("paddleocr-vl", "layout"),
    ]  # fmt: skip
    assert result.answers["paddleocr-vl layout"]["regions"] == regions
    # one region back means the layout model did not run: the proof fails and says so
    assert result.ok is ok and result.failed() == ([] if ok else ["paddleocr-vl layout"])


def test_boot_exit_ends_processes_in_their_own_process_group(tmp_path: Path) -> None:
    """tini puts the appliance in a process group of its own, and chroot isolation has no PID namespace:
    killing the boot's group alone left supervisord and three vLLM servers running after every proof."""
    import os
    import subprocess
    import sys
    import time

    spawn = (
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '300'], process_group=0)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    boot = proof.ImageBoot("unused", tmp_path, Catalog(REPO / "manifests").profile("tiny-cpu"))
    boot.proc = subprocess.Popen([sys.executable, "-c", spawn], stdout=subprocess.PIPE, start_new_session=True)
    assert boot.proc.stdout is not None
    orphan = int(boot.proc.stdout.readline())
    assert os.getpgid(orphan) != os.getpgid(boot.proc.pid)  # the shape that leaked
    boot.__exit__(None, None, None)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:  # gone, or a zombie waiting for whoever reaps orphans here
            if Path(f"/proc/{orphan}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
                break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"process {orphan} of the boot's session outlived the boot")
