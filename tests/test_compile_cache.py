"""Compile caches: the key, the launcher's seeding from a baked copy, the warm step's baking and the
image's cache layers (fast; real boots: the air-gap proof of `make offline-image`, test_runtime_stack)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.image import proof, warm
from appliance.image.archive import cache_layers, layers_of, model_layers
from appliance.runtime import compile_cache as cc

HOST: dict[str, Any] = {
    "vllm": "0.32.0",
    "torch": "2.13.0+cpu",
    "device": {"kind": "cpu", "machine": "x86_64", "isa": ["avx", "avx2", "fma"]},
    "lock_digest": "sha256:aaa",
    "serve": ["-m", "vllm.entrypoints.openai.api_server", "--model", "/models/m"],
}


def _bake(root: Path, model: str = "m", key: dict[str, Any] | None = None) -> Path:
    """A baked dir as `appliance image warm` writes it: cache/{vllm,inductor}/… + warm.json."""
    baked = root / model
    (baked / "cache/vllm/torch_compile_cache/abc/rank_0_0").mkdir(parents=True)
    (baked / "cache/vllm/torch_compile_cache/abc/rank_0_0/model").write_bytes(b"compiled graph" * 100)
    (baked / "cache/inductor").mkdir()
    (baked / "cache/inductor/kernel.so").write_bytes(b"\x7fELF kernel")
    cc.write_warm_json(baked, key or HOST)
    return baked


# --- the key ---------------------------------------------------------------------------------------


def test_same_key_matches() -> None:
    assert cc.key_mismatch(HOST, json.loads(json.dumps(HOST))) is None


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"torch": "2.12.0+cpu"}, "torch 2.12.0+cpu (this host 2.13.0+cpu)"),
        ({"vllm": "0.31.0"}, "vllm 0.31.0 (this host 0.32.0)"),
        (
            {"device": {"kind": "cpu", "machine": "x86_64", "isa": ["avx", "avx2", "avx512f", "fma"]}},
            "cpu device differs in isa",
        ),
        (
            {"device": {"kind": "cuda", "name": "NVIDIA L4", "compute_capability": "8.9", "driver": "550.1"}},
            "device cuda (this host cpu)",
        ),
        ({"lock_digest": "sha256:bbb"}, "another lock digest (the model changed)"),
        ({"serve": ["--model", "/models/m", "--max-model-len", "4096"]}, "other serve flags"),
    ],
)
def test_each_key_field_that_differs_is_named(change: dict[str, Any], said: str) -> None:
    assert said in (cc.key_mismatch(HOST | change, HOST) or "")


def test_gpu_driver_difference_is_named() -> None:
    gpu = {"kind": "cuda", "name": "NVIDIA L4", "compute_capability": "8.9", "driver": "550.54"}
    why = cc.key_mismatch(HOST | {"device": gpu}, HOST | {"device": gpu | {"driver": "560.35"}})
    assert why == "cuda device differs in driver"


def test_cpu_device_keeps_the_isa_flags_only() -> None:
    info = "processor\t: 0\nflags\t\t: fpu vme avx2 avx512f avx512_vnni amx_tile sse4_2 fma hypervisor\n"
    device = cc.cpu_device(info)
    assert device["kind"] == "cpu"
    assert device["isa"] == ["amx_tile", "avx2", "avx512_vnni", "avx512f", "fma", "sse4_2"]


def test_host_key_reads_the_versions_through_the_servers_interpreter() -> None:
    key = cc.host_key([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--port", "1"], "sha256:x", "cpu")
    assert set(key) == {"vllm", "torch", "device", "lock_digest", "serve"}
    assert key["serve"] == ["-m", "vllm.entrypoints.openai.api_server", "--port", "1"]
    assert key["device"]["kind"] == "cpu" and key["lock_digest"] == "sha256:x"
    assert cc.versions("/nonexistent/python") == {"vllm": None, "torch": None}


# --- seeding at launch -------------------------------------------------------------------------------


def test_matching_cache_is_seeded_into_the_writable_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TORCH_LOGS", "VLLM_USE_AOT_COMPILE"):
        monkeypatch.delenv(name, raising=False)
    baked = _bake(tmp_path / "baked")
    decision = cc.prepare_cache("m", HOST, baked_root=tmp_path / "baked", writable_root=tmp_path / "rw")
    assert decision.warm, decision.detail
    assert decision.detail.startswith("compile cache: warm (seeded 2 files")
    writable = tmp_path / "rw/m"
    assert decision.env == {
        "VLLM_CACHE_ROOT": str(writable / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(writable / "inductor"),
        "TRITON_CACHE_DIR": str(writable / "triton"),
        "TORCH_LOGS": cc.TORCH_LOGS,
        "VLLM_USE_AOT_COMPILE": "0",  # CPU: inductor's own caches, vLLM's AOT artefact does not load back
    }
    seeded = writable / "vllm/torch_compile_cache/abc/rank_0_0/model"
    assert seeded.read_bytes() == (baked / "cache/vllm/torch_compile_cache/abc/rank_0_0/model").read_bytes()
    seeded.write_bytes(b"vLLM may write here")  # writable, though the baked copy is read-only in the image
    assert json.loads((writable / cc.KEY_JSON).read_text()) == HOST
    again = cc.prepare_cache("m", HOST, baked_root=tmp_path / "baked", writable_root=tmp_path / "rw")
    assert again.warm and "kept from an earlier start" in again.detail  # a restart keeps what it has
    assert seeded.read_bytes() == b"vLLM may write here"


def test_mismatched_cache_starts_cold_and_says_why(tmp_path: Path) -> None:
    _bake(tmp_path / "baked", key=HOST | {"torch": "2.12.0+cpu"})
    decision = cc.prepare_cache("m", HOST, baked_root=tmp_path / "baked", writable_root=tmp_path / "rw")
    assert not decision.warm
    assert decision.detail == (
        "compile cache: cold (the baked cache does not match this host: torch 2.12.0+cpu (this host 2.13.0+cpu))"
    )
    assert not list((tmp_path / "rw/m/vllm").iterdir())  # nothing of the other key reaches vLLM
    assert decision.env["VLLM_CACHE_ROOT"] == str(tmp_path / "rw/m/vllm")


@pytest.mark.parametrize("damage", ["flip", "truncate", "extra", "warm.json", "warm.json-shape"])
def test_damaged_cache_starts_cold(tmp_path: Path, damage: str) -> None:
    baked = _bake(tmp_path / "baked")
    graph = baked / "cache/vllm/torch_compile_cache/abc/rank_0_0/model"
    if damage == "flip":
        data = bytearray(graph.read_bytes())
        data[7] ^= 1
        graph.write_bytes(bytes(data))
    elif damage == "truncate":
        graph.write_bytes(graph.read_bytes()[:-1])
    elif damage == "extra":
        (baked / "cache/inductor/planted.py").write_text("import os")
    elif damage == "warm.json":
        (baked / cc.WARM_JSON).write_text('{"key": {')
    else:
        (baked / cc.WARM_JSON).write_text('{"key": [], "files": {}}')
    decision = cc.prepare_cache("m", HOST, baked_root=tmp_path / "baked", writable_root=tmp_path / "rw")
    assert not decision.warm
    expected = "unreadable" if damage.startswith("warm.json") else "the baked cache is damaged"
    assert expected in decision.detail, decision.detail
    assert not (tmp_path / "rw/m/vllm/torch_compile_cache").exists()


def test_writable_cache_of_another_key_is_replaced(tmp_path: Path) -> None:
    _bake(tmp_path / "baked")
    old = tmp_path / "rw/m/vllm/torch_compile_cache/old"
    old.mkdir(parents=True)
    (tmp_path / "rw/m" / cc.KEY_JSON).write_text(json.dumps(HOST | {"vllm": "0.31.0"}))
    decision = cc.prepare_cache("m", HOST, baked_root=tmp_path / "baked", writable_root=tmp_path / "rw")
    assert decision.warm and "seeded" in decision.detail and not old.exists()


def test_no_baked_cache_and_unusable_writable_dir_never_raise(tmp_path: Path) -> None:
    decision = cc.prepare_cache("m", HOST, baked_root=tmp_path / "none", writable_root=tmp_path / "rw")
    assert not decision.warm and "the image carries no compile cache for this model" in decision.detail
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    decision = cc.prepare_cache("m", HOST, baked_root=tmp_path / "none", writable_root=blocker)
    assert not decision.warm and "unusable" in decision.detail
    assert not {"VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR"} & set(decision.env)  # vLLM's own defaults


def test_engine_switches_follow_the_device_and_yield_to_the_operator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TORCH_LOGS", "VLLM_USE_AOT_COMPILE"):
        monkeypatch.delenv(name, raising=False)
    gpu = HOST | {"device": {"kind": "cuda", "name": "NVIDIA L4", "compute_capability": "8.9", "driver": "580"}}
    assert (
        cc.prepare_cache("m", gpu, baked_root=tmp_path / "none", writable_root=tmp_path / "rw").env["TORCH_LOGS"]
        == cc.TORCH_LOGS
    )
    assert cc.engine_env("cuda") == {"TORCH_LOGS": cc.TORCH_LOGS}  # vLLM's AOT path loads on a GPU
    assert "VLLM_USE_AOT_COMPILE" not in cc.prepare_cache("m", gpu, baked_root=tmp_path, writable_root=tmp_path).env
    assert cc.engine_env("cpu")["VLLM_USE_AOT_COMPILE"] == "0"
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "1")
    monkeypatch.setenv("TORCH_LOGS", "+dynamo")
    assert cc.engine_env("cpu") == {}


# --- baking (the warm step) ------------------------------------------------------------------------------


def _capture(path: Path, key: dict[str, Any], content: bytes) -> Path:
    (path / "vllm/torch_compile_cache/h").mkdir(parents=True)
    (path / "vllm/torch_compile_cache/h/model").write_bytes(content)
    (path / "inductor").mkdir()
    (path / cc.KEY_JSON).write_text(json.dumps(key))
    return path


def test_bake_keeps_the_bytes_while_the_key_holds(tmp_path: Path) -> None:
    baked = tmp_path / "keep/m"
    data, reused = warm.bake(_capture(tmp_path / "c1", HOST, b"first"), baked)
    assert not reused and data["key"] == HOST and set(data["files"]) == {"vllm/torch_compile_cache/h/model"}
    assert oct((baked / "cache/vllm/torch_compile_cache/h/model").stat().st_mode & 0o777) == "0o644"
    # compiled artefacts are not byte-reproducible: a re-warm with the same key keeps the first bytes
    data, reused = warm.bake(_capture(tmp_path / "c2", HOST, b"second"), baked)
    assert reused and (baked / "cache/vllm/torch_compile_cache/h/model").read_bytes() == b"first"
    changed = HOST | {"lock_digest": "sha256:new"}
    data, reused = warm.bake(_capture(tmp_path / "c3", changed, b"third"), baked)
    assert not reused and data["key"] == changed
    assert (baked / "cache/vllm/torch_compile_cache/h/model").read_bytes() == b"third"
    assert not (baked / cc.CACHE_SUBDIR / cc.KEY_JSON).exists()


def test_warm_dockerfile_adds_one_layer_per_model() -> None:
    text = warm.warm_dockerfile("localhost/ocr-appliance:tiny-cpu-cold", ["a", "b"])
    assert "FROM localhost/ocr-appliance:tiny-cpu-cold\nCOPY a/ /\nCOPY b/ /\n" in text
    assert 'LABEL appliance.warm="a,b"' in text


def test_cpu_profile_needs_no_gpu_to_warm() -> None:
    from appliance.manifest import Catalog
    from tests.conftest import REPO

    catalog = Catalog(REPO / "manifests")
    assert warm.gpu_missing(catalog.profile("tiny-cpu")) is None
    assert warm.warm_devices(catalog.profile("tiny-cpu")) == ()
    assert warm.warm_devices(catalog.profile("gpu-24gb")) == ("nvidia.com/gpu=all",)


# --- cache layers in the image's layer map ----------------------------------------------------------------


def test_cache_layers_come_after_the_code_layer() -> None:
    models, warmed = ["a", "b"], ["a", "b"]
    diff_ids = [f"sha256:{i}" for i in range(1 + 2 + 2 + 2 + 2)]
    history = [{"created_by": "base"}, {"created_by": "COPY tini-static /usr/local/bin/tini"}]
    history += [{"created_by": x} for x in ("RUN user", "COPY a", "COPY b", "COPY venv", "COPY code", "a", "b")]
    layers = layers_of(diff_ids, history, models, warmed)
    assert [(la.role, la.model) for la in layers] == [
        ("base", None), ("setup", None), ("setup", None), ("model", "a"), ("model", "b"),
        ("deps", None), ("code", None), ("cache", "a"), ("cache", "b"),
    ]  # fmt: skip
    assert model_layers(layers)["a"].diff_id == "sha256:3"
    assert cache_layers(layers)["a"].diff_id == "sha256:7"
    cold = layers_of(diff_ids[:-2], history[:-2], models)
    assert not cache_layers(cold) and model_layers(cold)["b"].diff_id == "sha256:4"


# --- the proof's reading of the boot log ------------------------------------------------------------------

LOG = """\
[launch m1] compile cache: warm (seeded 3 files, 1000 bytes from /opt/appliance/warm/m1)
(Worker pid=41) INFO 12-02 00:26:40 [cpu_model_runner.py:68] Starting to load model /models/m1...
[rank0]:I1202 00:26:43.041000 41 torch/_inductor/codecache.py:2299] [0/0] fx graph cache hit for key fkko7v
[rank0]:I1202 00:26:43.047000 41 torch/_functorch/_aot_autograd/autograd_cache.py:1028] [0/0] AOTAutograd \
cache hit for key axnnwc
[launch m2] compile cache: cold (the baked cache does not match this host: torch 2.12 (this host 2.13))
(Worker pid=52) INFO 12-02 00:27:30 [cpu_model_runner.py:68] Starting to load model /models/m2...
[rank0]:I1202 00:27:32.036000 52 torch/_functorch/_aot_autograd/autograd_cache.py:1055] [0/0] AOTAutograd \
cache miss for key axnnwc
[launch m3] compile cache: warm (seeded 3 files, 1000 bytes from /opt/appliance/warm/m3)
(VllmWorker-0 pid=63) INFO 12-02 00:28:30 [gpu_model_runner.py:4000] Starting to load model /models/m3...
(Worker pid=63) INFO 12-01 [decorators.py:320] Directly load AOT compilation from path /c/m3/vllm/model
[launch m1] compile cache: warm (kept from an earlier start, /var/cache/appliance/compile/m1)
[rank0]:I1202 00:28:34.375000 63 torch/_inductor/codecache.py:2316] [1/0] fx graph cache miss for key zz
(Worker pid=74) INFO 12-02 00:28:35 [cpu_model_runner.py:68] Starting to load model /models/m1...
[launch m4] compile cache: warm (seeded 3 files, 1000 bytes from /opt/appliance/warm/m4)
(Worker pid=74) INFO 12-01 [decorators.py:320] Directly load AOT compilation from path /c/m1/vllm/model
(Worker pid=85) INFO 12-02 00:28:40 [cpu_model_runner.py:68] Starting to load model /models/m4...
"""


def test_proof_needs_every_graph_of_each_warmed_model_loaded() -> None:
    """Each start's lines are its launcher line and its own vLLM process's (by pid) — m1 restarts while
    m3 is still compiling; a start is warm only when the launcher seeded it and torch or vLLM loaded
    at least one graph and compiled none."""
    starts = proof.start_logs(LOG, "m1")
    assert len(starts) == 2 and "AOTAutograd cache hit" in starts[0] and "m2" not in starts[0]
    first = proof.cache_use(starts[0])
    assert first.hit and len(first.loads) == 2 and not first.compiles
    report = proof.cache_report(LOG, ["m1", "m2", "m3", "m4", "m5"])
    assert report["m1"].hit and report["m1"].loads == [LOG.splitlines()[-2]]  # the restart, not m3's miss
    assert report["m1"].launcher.startswith("compile cache: warm (kept")
    assert not report["m2"].hit and report["m2"].launcher.startswith("compile cache: cold (the baked")
    assert len(report["m2"].compiles) == 1
    assert not report["m3"].hit and len(report["m3"].loads) == 1, "one graph compiled: not a warm start"
    assert len(report["m3"].compiles) == 1
    assert not report["m4"].hit and not report["m4"].loads, "seeded, yet nothing loaded"
    assert report["m5"].launcher == "compile cache: (no launcher line)" and not report["m5"].hit
    result = proof.ProofResult("img", 1.0, caches=report)
    assert result.failed() == [f"{m} (compile cache unused)" for m in ("m2", "m3", "m4", "m5")] and not result.ok
