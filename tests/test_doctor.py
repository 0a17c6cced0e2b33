"""`appliance doctor`: every check passing and failing, on recorded nvidia-smi output and real
ports, stores and interpreters; the CLI's exit code and JSON."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from appliance import constants
from appliance.runtime.doctor import (
    Check,
    check_disk,
    check_gpu,
    check_layout_device,
    check_offline_env,
    check_ports,
    check_python,
    check_store,
    parse_gpus,
)
from appliance.store.lock import Lock, LockedFile, write_lock
from tests.conftest import REPO, ManifestDir, make_files

RTX_3060 = "NVIDIA GeForce RTX 3060, 12288, 8.6\n"
RTX_4070 = "NVIDIA GeForce RTX 4070, 12282, 8.9\n"


def smi(stdout: str, returncode: int = 0, stderr: str = ""):  # type: ignore[no-untyped-def]
    """A command runner that answers like nvidia-smi did on some host."""

    def run(args, timeout):  # type: ignore[no-untyped-def]
        assert args[0] == "nvidia-smi"
        return subprocess.CompletedProcess(args, returncode, stdout, stderr)

    return run


def no_smi(args, timeout):  # type: ignore[no-untyped-def]
    raise FileNotFoundError(args[0])


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def add_model(
    manifests: ManifestDir,
    name: str,
    weight_gib: float = 2.0,
    min_cc: float | None = None,
    packages: tuple[str, ...] = (),
) -> None:
    lines = [
        "engine: qwen3-vl",
        "source: dir:/nowhere",
        "serve: {served_model_name: " + name + "}",
        f"resources: {{weight_bytes: {int(weight_gib * 2**30)}, overhead_bytes: 0"
        + (f", min_compute_capability: {min_cc}" if min_cc else "")
        + "}",
    ]
    if packages:
        lines.append(f"python_packages: [{', '.join(packages)}]")
    manifests.model(name, "\n".join(lines) + "\n")


def add_profile(manifests: ManifestDir, name: str, models: list[str], target: str, **ports: int) -> None:
    entries = "\n".join(
        f"  - {{model: {m}, max_model_len: 2048, max_num_seqs: 1, port: {ports.get(m, 9000 + i)}}}"
        for i, m in enumerate(models)
    )
    gateway = ports.get("gateway", 8999)
    manifests.profile(name, f"target: {target}\nbase_image: x\ngateway_port: {gateway}\nmodels:\n{entries}\n")


@pytest.fixture
def gpu12(manifests: ManifestDir) -> ManifestDir:
    """A 12 GiB / 8.9 profile of two models: 2 + 6 GiB of weights, one FP8 (needs 8.9)."""
    add_model(manifests, "small", 2.0)
    add_model(manifests, "small-fp8", 6.0, min_cc=8.9)
    add_profile(manifests, "gpu", ["small", "small-fp8"], "{device: cuda, gpu_memory_gib: 12, compute_capability: 8.9}")
    return manifests


# --- 1. GPU ---------------------------------------------------------------------------------------


def test_parse_gpus() -> None:
    gpus = parse_gpus("NVIDIA A10, 23028, 8.6\nNVIDIA H100 80GB HBM3, 81559, 9.0\nOld card, [N/A], [N/A]\n\n")
    assert [(g.name, g.memory_mib, g.compute_capability) for g in gpus] == [
        ("NVIDIA A10", 23028, 8.6),
        ("NVIDIA H100 80GB HBM3", 81559, 9.0),
        ("Old card", None, None),
    ]


def test_gpu_passes(gpu12: ManifestDir) -> None:
    catalog = gpu12.catalog()
    checks = by_name(check_gpu(catalog, catalog.profile("gpu"), run=smi(RTX_4070), environ={}))
    assert all(c.status in ("pass", "warn") for c in checks.values()), checks
    assert "RTX 4070" in checks["gpu"].detail and "8.9" in checks["gpu"].detail
    assert checks["compute capability"].status == "pass"
    # 12282 MiB is 6 MiB short of the nominal 12 GiB: within the tolerance, so the plan decides.
    assert checks["gpu memory"].status == "warn" and "plan needs" in checks["gpu memory"].detail


def test_cpu_profile_needs_no_gpu(manifests: ManifestDir) -> None:
    add_model(manifests, "small")
    add_profile(manifests, "cpu", ["small"], "{device: cpu}")
    catalog = manifests.catalog()
    (gpu,) = check_gpu(catalog, catalog.profile("cpu"), run=no_smi)
    assert gpu == Check("gpu", "pass", "cpu profile: no GPU needed")


def test_no_gpu_fails(gpu12: ManifestDir) -> None:
    profile = gpu12.catalog().profile("gpu")
    (missing,) = check_gpu(gpu12.catalog(), profile, run=no_smi)
    assert missing.status == "fail" and "nvidia-smi not found" in missing.detail
    (broken,) = check_gpu(gpu12.catalog(), profile, run=smi("", 9, "NVIDIA-SMI has failed: driver mismatch"))
    assert broken.status == "fail" and "driver mismatch" in broken.detail
    (empty,) = check_gpu(gpu12.catalog(), profile, run=smi(""))
    assert empty.status == "fail" and "no GPU" in empty.detail


def test_model_needing_8_9_fails_on_an_8_6_gpu(gpu12: ManifestDir) -> None:
    catalog = gpu12.catalog()
    cap = by_name(check_gpu(catalog, catalog.profile("gpu"), run=smi(RTX_3060), environ={}))["compute capability"]
    assert cap.status == "fail"
    assert "small-fp8 needs >= 8.9" in cap.detail and "profile gpu targets 8.9" in cap.detail
    assert "small needs" not in cap.detail


def test_too_little_gpu_memory_fails_with_the_planners_message(gpu12: ManifestDir) -> None:
    catalog = gpu12.catalog()
    run = smi("NVIDIA RTX A2000, 6138, 8.9\n")
    memory = by_name(check_gpu(catalog, catalog.profile("gpu"), run=run, environ={}))["gpu memory"]
    assert memory.status == "fail"
    assert "profile gpu needs 8.00 GiB but 6.0 GiB x 0.90" in memory.detail  # plan_profile's PlanError
    assert "small-fp8" in memory.detail and "weights" in memory.detail
    # --gpu-memory-gib: a GPU shared with other work gives the appliance less than it has.
    limited = check_gpu(catalog, catalog.profile("gpu"), gpu_memory_gib=7, run=smi(RTX_4070), environ={})
    assert by_name(limited)["gpu memory"].status == "fail"
    assert "--gpu-memory-gib 7" in by_name(limited)["gpu memory"].detail


def test_memory_below_target_fails_even_if_the_plan_fits(manifests: ManifestDir) -> None:
    add_model(manifests, "small", 1.0)
    add_profile(manifests, "gpu", ["small"], "{device: cuda, gpu_memory_gib: 24}")
    catalog = manifests.catalog()
    memory = by_name(check_gpu(catalog, catalog.profile("gpu"), run=smi(RTX_3060), environ={}))["gpu memory"]
    assert memory.status == "fail" and "below the profile's 24 GiB target" in memory.detail


def test_fractions_planned_for_the_target_must_cover_a_smaller_card(manifests: ManifestDir) -> None:
    """Planned for 24 GiB, the big model gets 0.84 (20.2 GiB); on 23.5 GiB that is 19.7 < 19.9 GiB,
    although a plan made for 23.5 GiB would fit: the image's rendered flags are what runs."""
    add_model(manifests, "a", 1.0)
    add_model(manifests, "b", 19.9)
    add_profile(manifests, "gpu", ["a", "b"], "{device: cuda, gpu_memory_gib: 24}")
    catalog = manifests.catalog()
    run = smi(f"NVIDIA X, {23.5 * 1024:.0f}, 8.9\n")
    memory = by_name(check_gpu(catalog, catalog.profile("gpu"), run=run, environ={}))["gpu memory"]
    assert memory.status == "fail" and "b gets 0.84 x 23.50" in memory.detail


def test_the_gpu_cuda_sees_first_is_checked(gpu12: ManifestDir) -> None:
    catalog = gpu12.catalog()
    run = smi(RTX_3060 + RTX_4070)
    first = by_name(check_gpu(catalog, catalog.profile("gpu"), run=run, environ={}))
    assert first["compute capability"].status == "fail" and "GPU 0 of 2" in first["gpu"].detail
    second = by_name(check_gpu(catalog, catalog.profile("gpu"), run=run, environ={"CUDA_VISIBLE_DEVICES": "1"}))
    assert second["compute capability"].status == "pass" and "RTX 4070" in second["gpu"].detail


# --- 2. disk --------------------------------------------------------------------------------------


def test_disk(tmp_path: Path) -> None:
    def usage(free: int):  # type: ignore[no-untyped-def]
        return lambda path: SimpleNamespace(free=free)

    dirs = {"HF_HOME": tmp_path, "run dir": tmp_path / "not" / "yet"}
    assert {c.status for c in check_disk(dirs, usage(50_000_000_000))} == {"pass"}
    warn = check_disk(dirs, usage(1_500_000_000))
    assert [c.status for c in warn] == ["warn", "warn"] and "1.5 GB free" in warn[0].detail
    fail = check_disk(dirs, usage(100_000_000))
    assert [c.status for c in fail] == ["fail", "fail"]
    assert f"{tmp_path / 'not' / 'yet'} (not yet created; {tmp_path})" in fail[1].detail
    real = check_disk({"HF_HOME": tmp_path})  # shutil.disk_usage on the real disk
    assert real[0].name == "disk HF_HOME" and "GB free" in real[0].detail


# --- 3. ports -------------------------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_ports(manifests: ManifestDir, listener: int) -> None:
    add_model(manifests, "small")
    free, gateway = free_port(), free_port()
    add_profile(manifests, "ok", ["small"], "{device: cpu}", small=free, gateway=gateway)
    add_profile(manifests, "busy", ["small"], "{device: cpu}", small=listener, gateway=gateway)
    add_profile(manifests, "gw-busy", ["small"], "{device: cpu}", small=free, gateway=listener)
    catalog = manifests.catalog()
    (ok,) = check_ports(catalog.profile("ok"))
    assert ok.status == "pass" and f"{free} (small)" in ok.detail and f"{gateway} (gateway)" in ok.detail
    (busy,) = check_ports(catalog.profile("busy"))
    assert busy.status == "fail" and busy.detail.startswith(f"in use by another process: {listener} (small)")
    (gw,) = check_ports(catalog.profile("gw-busy"))  # the gateway is checked on every interface
    assert gw.status == "fail" and f"{listener} (gateway)" in gw.detail
    # --running: the appliance itself holds its ports; one that nobody listens on is a warning.
    (running,) = check_ports(catalog.profile("busy"), running=True)
    assert running.status == "warn" and f"{gateway} (gateway)" in running.detail
    add_profile(manifests, "clash", ["small"], "{device: cpu}", small=gateway, gateway=gateway)
    (clash,) = check_ports(manifests.catalog().profile("clash"))
    assert clash.status == "fail" and "one port to several programs" in clash.detail


# --- 4. store -------------------------------------------------------------------------------------


def fill_store(manifests: ManifestDir, store: Path, name: str) -> None:
    files = {"config.json": b"{}", "model.safetensors": b"x" * 1000, "sub/tokenizer.json": b"[]"}
    make_files(store / name, files)
    locked = [LockedFile(path=p, size=len(d), sha256=hashlib.sha256(d).hexdigest()) for p, d in files.items()]
    catalog = manifests.catalog()
    write_lock(catalog.lock_path(name), Lock.create(catalog.model(name), "a" * 40, locked))


def test_store(manifests: ManifestDir, tmp_path: Path) -> None:
    store = tmp_path / "store"
    for name in ("good", "bad", "unlocked"):
        add_model(manifests, name)
    add_profile(manifests, "cpu", ["good", "bad", "unlocked"], "{device: cpu}")
    fill_store(manifests, store, "good")
    fill_store(manifests, store, "bad")
    (store / "bad" / "model.safetensors").write_bytes(b"x" * 10)  # truncated
    (store / "bad" / "stray.bin").write_bytes(b"?")
    catalog = manifests.catalog()
    checks = by_name(check_store(catalog, catalog.profile("cpu"), store))
    assert checks["store good"].status == "pass" and "3 files" in checks["store good"].detail
    bad = checks["store bad"]
    assert bad.status == "fail"
    assert "model.safetensors: size 10 bytes, lock says 1000" in bad.detail and "stray.bin: extra file" in bad.detail
    assert checks["store unlocked"].status == "fail" and "no lock at" in checks["store unlocked"].detail
    # an empty store: every model's directory is missing
    assert {c.status for c in check_store(catalog, catalog.profile("cpu"), tmp_path / "empty")} == {"fail"}


# --- 5. Python packages -----------------------------------------------------------------------------


@pytest.fixture
def fake_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `vllm` findable by sys.executable's subprocess, without vLLM."""
    make_files(tmp_path / "site", {"vllm/__init__.py": b""})
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))


def test_python_packages(manifests: ManifestDir, fake_vllm: None) -> None:
    add_model(manifests, "got-ocr", packages=("verovio_not_installed", "json"))
    add_model(manifests, "plain", packages=("json",))
    add_profile(manifests, "cpu", ["got-ocr", "plain"], "{device: cpu}")
    catalog = manifests.catalog()
    checks = by_name(check_python(catalog, catalog.profile("cpu"), sys.executable))
    assert checks["vllm"].status == "pass"
    missing = checks["python packages"]
    assert missing.status == "fail" and missing.detail.startswith("not importable: verovio_not_installed (got-ocr;")
    assert "json" not in missing.detail

    add_profile(manifests, "fine", ["plain"], "{device: cpu}")
    fine = by_name(check_python(catalog, catalog.profile("fine"), sys.executable))["python packages"]
    assert fine.status == "pass" and "json (plain;" in fine.detail


def test_packages_of_a_layout_model_are_checked_in_the_appliance_interpreter(manifests: ManifestDir) -> None:
    """vLLM never loads the Paddle layout model: the gateway (this interpreter) needs its packages."""
    manifests.model(
        "layout",
        """\
        engine: paddle-layout
        source: dir:/nowhere
        resources: {weight_bytes: 1000}
        python_packages: [yaml, paddlex_not_installed]
        """,
    )
    manifests.model(
        "paddle",
        """\
        engine: paddleocr-vl
        source: dir:/nowhere
        serve: {served_model_name: p}
        layout: {model_name: PP-DocLayoutV2, model: layout, pipeline_version: v1}
        resources: {weight_bytes: 1000}
        """,
    )
    add_profile(manifests, "cpu", ["paddle"], "{device: cpu}")
    catalog = manifests.catalog()
    checks = by_name(check_python(catalog, catalog.profile("cpu"), "/nonexistent/python3"))
    assert checks["vllm"].status == "fail"
    packages = checks["python packages"]
    assert packages.detail == f"not importable: paddlex_not_installed (layout; {sys.executable})"


def test_vllm_missing_fails(manifests: ManifestDir) -> None:
    if importlib.util.find_spec("vllm"):
        pytest.skip("this interpreter has vllm")
    add_model(manifests, "plain")
    add_profile(manifests, "cpu", ["plain"], "{device: cpu}")
    catalog = manifests.catalog()
    checks = by_name(check_python(catalog, catalog.profile("cpu"), sys.executable))
    assert checks["vllm"].status == "fail" and "vllm is not importable" in checks["vllm"].detail
    assert checks["python packages"].status == "pass"
    gone = by_name(check_python(catalog, catalog.profile("cpu"), "/nonexistent/python3"))
    assert gone["vllm"].status == "fail" and "interpreter /nonexistent/python3 not found" in gone["vllm"].detail


@pytest.mark.slow
def test_python_packages_in_the_real_vllm_interpreter(manifests: ManifestDir) -> None:
    """The real vLLM interpreter (APPLIANCE_VLLM_PYTHON, default `<repo>/.venv-vllm/bin/python`)."""
    env = os.environ.get("APPLIANCE_VLLM_PYTHON")
    python = Path(env) if env else REPO / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        pytest.fail(f"vLLM interpreter {python} does not exist (point APPLIANCE_VLLM_PYTHON at one)", pytrace=False)
    add_model(manifests, "got-ocr", packages=("verovio_not_installed", "transformers"))
    add_profile(manifests, "cpu", ["got-ocr"], "{device: cpu}")
    catalog = manifests.catalog()
    checks = by_name(check_python(catalog, catalog.profile("cpu"), str(python)))
    assert checks["vllm"].status == "pass" and "vllm" in checks["vllm"].detail
    packages = checks["python packages"]
    assert packages.status == "fail" and "verovio_not_installed" in packages.detail
    assert "transformers" not in packages.detail


# --- 6. offline switches --------------------------------------------------------------------------


def test_offline_switches() -> None:
    good = dict(constants.OFFLINE_ENV)
    assert [c.status for c in check_offline_env(good)] == ["pass", "pass"]
    bad = {k: v for k, v in good.items() if k != "HF_HUB_OFFLINE"} | {"VLLM_HOST_IP": "0.0.0.0"}
    switches, _ = check_offline_env(bad)
    assert switches.status == "fail"
    assert "unset: HF_HUB_OFFLINE" in switches.detail and "VLLM_HOST_IP='0.0.0.0' (want 127.0.0.1)" in switches.detail
    _, redirects = check_offline_env(good | {"HF_ENDPOINT": "http://m:8090", "HTTPS_PROXY": "http://u:secret@p:3128"})
    assert redirects.status == "warn" and "HF_ENDPOINT, HTTPS_PROXY" in redirects.detail
    assert "secret" not in redirects.detail  # names only: a proxy URL can carry credentials


# --- the CLI --------------------------------------------------------------------------------------


@pytest.fixture
def healthy_cpu_host(manifests: ManifestDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_vllm: None) -> Path:
    """A cpu profile whose every check passes: store, locks, free ports, switches, an interpreter with vllm."""
    add_model(manifests, "small")
    add_profile(manifests, "cpu", ["small"], "{device: cpu}", small=free_port(), gateway=free_port())
    fill_store(manifests, tmp_path / "store", "small")
    for key, value in constants.OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("APPLIANCE_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("APPLIANCE_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("APPLIANCE_VLLM_PYTHON", sys.executable)
    monkeypatch.setenv("APPLIANCE_PROFILE", "cpu")
    return manifests.root


def appliance(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    from appliance.cli import main

    monkeypatch.setattr(sys, "argv", ["appliance", *args])
    with pytest.raises(SystemExit) as exc:
        main()
        raise SystemExit(0)
    return int(exc.value.code or 0)


def test_cli_exit_codes_and_json(
    healthy_cpu_host: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(healthy_cpu_host)
    assert appliance(monkeypatch, "doctor", "--manifests", root) == 0
    shown = capsys.readouterr().out
    assert "appliance doctor: cpu" in shown and "fail" not in shown.replace("0 failed", "")

    monkeypatch.setenv("HF_ENDPOINT", "http://mirror:8090")  # a warning alone still exits 0
    assert appliance(monkeypatch, "doctor", "--manifests", root, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is True and result["counts"]["warn"] == 1 and result["profile"] == "cpu"

    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    assert appliance(monkeypatch, "doctor", "--manifests", root, "--json") == 1
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is False and result["counts"]["fail"] == 1
    (failed,) = [c for c in result["checks"] if c["status"] == "fail"]
    assert failed == {
        "name": "offline switches",
        "status": "fail",
        "detail": "unset: TRANSFORMERS_OFFLINE (the image sets them as ENV)",
    }
    names = [c["name"] for c in result["checks"]]
    assert names[0] == "gpu" and "store small" in names and "vllm" in names and "ports" in names

    assert appliance(monkeypatch, "doctor", "--manifests", root, "--store", str(healthy_cpu_host / "nowhere")) == 1
    assert "model directory is missing" in capsys.readouterr().out


def test_doctor_says_where_the_layout_model_runs(manifests: ManifestDir, tmp_path: Path) -> None:
    """A GPU profile whose gateway would run the layout model on the CPU: warned, with what that caps."""
    manifests.model("onnx", "engine: paddle-layout\nsource: dir:/nowhere\nresources: {weight_bytes: 1000}\n")
    manifests.model(
        "paddle",
        """\
        engine: paddleocr-vl
        source: dir:/nowhere
        serve: {served_model_name: p}
        layout: {model_name: PP-DocLayoutV2, subdir: PP-DocLayoutV2, pipeline_version: v1, gpu_model: onnx}
        resources: {weight_bytes: 1000}
        """,
    )
    add_profile(manifests, "cpu", ["paddle"], "{device: cpu}")
    add_profile(manifests, "gpu", ["paddle"], "{device: cuda, gpu_memory_gib: 24}")
    catalog = manifests.catalog()
    store = tmp_path / "models"

    def nothing(distribution: str) -> str | None:
        return None

    def check(profile: str, installed: Any = nothing) -> Check:
        [found] = check_layout_device(catalog, catalog.profile(profile), store, installed)
        return found

    cpu = check("cpu", lambda d: pytest.fail("a CPU profile needs no probe"))
    assert cpu.status == "pass" and cpu.detail.startswith("CPU (paddle, CPU), a CPU profile: ~0.6 s a page caps")
    shortfall = check("gpu")
    assert shortfall.status == "warn", shortfall
    assert "no " + str(store / "onnx" / "inference.onnx") + " (the image lacks onnx)" in shortfall.detail
    assert "caps requests with layout on near 1.7 pages/s whatever the GPU" in shortfall.detail
    assert "1.62 pages/s on one A100" in shortfall.detail
    (store / "onnx").mkdir(parents=True)
    (store / "onnx" / "inference.onnx").write_bytes(b"onnx")
    no_runtime = check("gpu")
    assert no_runtime.status == "warn" and "onnxruntime-gpu is not installed" in no_runtime.detail
    ort = check("gpu", {"onnxruntime-gpu": "1.31.1"}.get)
    assert ort.status == "pass" and ort.detail.startswith("GPU (ONNX Runtime 1.31.1, CUDAExecutionProvider, onnx)")
    assert "near 20.0 pages/s" in ort.detail
    # Paddle's GPU build installed by hand (Paddle's own index): PaddleX puts the Paddle model on the GPU
    (store / "onnx" / "inference.onnx").unlink()
    paddle_gpu = check("gpu", {"paddlepaddle-gpu": "3.3.1"}.get)
    assert paddle_gpu.status == "pass" and paddle_gpu.detail.startswith("GPU (paddlepaddle-gpu 3.3.1)")
