"""fetch through the real huggingface_hub and modelscope clients against the local mirror,
including a misbehaving mirror: every refusal here has a test that fails if the check goes."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from appliance.errors import (
    AccessDeniedError,
    DiskFullError,
    HubUnreachableError,
    IntegrityError,
    RevisionNotFoundError,
    UnpinnedRevisionError,
    UnsafePathError,
)
from appliance.mirror import Faults, HubMirror, MirrorRepo, repo_from_dir
from appliance.store.fetch import FetchOptions, ModelFetch, fetch_model
from appliance.store.lock import read_lock
from appliance.store.sources.hf import HFSource
from appliance.store.verify import verify_deep
from tests.conftest import ManifestDir, make_files

REPO = "org/tiny"
BIG = "model.safetensors"
FILES = {
    "config.json": b'{"model_type": "tiny"}\n',
    "tokenizer.json": b'{"version": "1.0"}\n' * 50,
    "PP-DocLayoutV2/inference.yml": b"Global: {model_name: PP-DocLayoutV2}\n",
    BIG: random.Random(0).randbytes(2 * 1024 * 1024 + 123),
}
BODY = """
engine: paddleocr-vl
source: {kind}:{repo}
revision: {revision}
serve: {{served_model_name: X}}
resources: {{weight_bytes: 1}}
"""


@pytest.fixture
def repo(tmp_path: Path) -> MirrorRepo:
    return repo_from_dir(REPO, make_files(tmp_path / "src", FILES), branches=("main", "master"))


@pytest.fixture
def hub(start_mirror, repo: MirrorRepo):  # type: ignore[no-untyped-def]
    """Start a mirror of `repo` (optionally with faults); the fetcher must honour HF_ENDPOINT set at run time."""
    return lambda faults=None: start_mirror([repo], faults)


def _catalog(manifests: ManifestDir, repo: MirrorRepo, kind: str = "hf", revision: str | None = None):  # type: ignore[no-untyped-def]
    manifests.model("m", BODY.format(kind=kind, repo=REPO, revision=revision or repo.commit))
    return manifests.catalog()


def _fetch(catalog, store: Path, **options):  # type: ignore[no-untyped-def]
    return fetch_model(catalog.model("m"), catalog.lock_path("m"), store, FetchOptions(**options))


def _downloads(mirror: HubMirror, path: str) -> list[str | None]:
    """Range headers of the GETs that carried `path`'s bytes (HF resolve or ModelScope repo?FilePath)."""
    return [
        r.range
        for r in mirror.requests
        if r.method == "GET" and (r.path.endswith(f"/{path}") or f"FilePath={path}" in r.path.replace("%2F", "/"))
    ]


@pytest.mark.parametrize("kind", ["hf", "modelscope"])
def test_fetch_writes_lock_and_store_then_frozen_is_up_to_date(hub, manifests, repo, tmp_path, kind) -> None:  # type: ignore[no-untyped-def]
    mirror = hub()
    catalog = _catalog(manifests, repo, kind)
    store = tmp_path / "store"
    report = _fetch(catalog, store)
    assert report.lock_written and report.downloaded_bytes == sum(map(len, FILES.values()))
    lock = read_lock(catalog.lock_path("m"))
    assert lock is not None and lock.commit == repo.commit
    assert {f.path: f.sha256 for f in lock.files} == {f.path: f.sha256 for f in repo.files}
    assert verify_deep(store / "m", lock) == []
    for rel, data in FILES.items():
        assert (store / "m" / rel).read_bytes() == data
    before = len(mirror.requests)
    again = _fetch(catalog, store, frozen=True)
    assert again.up_to_date and len(mirror.requests) == before  # no request at all


def test_branch_revision_needs_allow_unpinned(hub, manifests, repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    hub()
    catalog = _catalog(manifests, repo, revision="main")
    with pytest.raises(UnpinnedRevisionError, match="--allow-unpinned"):
        _fetch(catalog, tmp_path / "store")
    _fetch(catalog, tmp_path / "store", allow_unpinned=True)
    lock = read_lock(catalog.lock_path("m"))
    assert lock is not None and lock.commit == repo.commit and lock.revision == "main"


def test_flipped_byte_refused_against_hub_sha_and_against_lock(hub, manifests, repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    hub(Faults(flip_byte={BIG}))
    catalog = _catalog(manifests, repo)
    store = tmp_path / "store"
    with pytest.raises(IntegrityError) as err:
        _fetch(catalog, store, retries=1)
    assert err.value.path == BIG and "the hub lists" in str(err.value)
    assert not (store / "m").exists() and read_lock(catalog.lock_path("m")) is None
    hub()  # a good mirror: lock written
    _fetch(catalog, store)
    (store / "m" / BIG).unlink()
    hub(Faults(flip_byte={BIG}))
    with pytest.raises(IntegrityError, match="lock says"):
        _fetch(catalog, store, frozen=True, retries=0)


def test_small_file_checked_against_git_blob_id(hub, manifests, repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    hub(Faults(flip_byte={"tokenizer.json"}))
    with pytest.raises(IntegrityError, match="git blob id"):
        _fetch(_catalog(manifests, repo), tmp_path / "store", retries=0)


def test_truncated_body_is_retried_then_refused(hub, manifests, repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    mirror = hub(Faults(truncate={BIG}))
    with pytest.raises(Exception) as err:
        _fetch(_catalog(manifests, repo), tmp_path / "store", retries=1)
    assert BIG in str(err.value) and "2 attempts" in str(err.value)
    assert not (tmp_path / "store" / "m").exists()
    assert len(_downloads(mirror, BIG)) >= 2


def test_dropped_connection_resumes_with_range(hub, manifests, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from huggingface_hub import constants

    # huggingface_hub writes 10 MiB pieces and resumes from the last whole piece it wrote.
    chunk = constants.DOWNLOAD_CHUNK_SIZE
    data = random.Random(1).randbytes(chunk + 2_000_000)
    big = repo_from_dir(REPO, make_files(tmp_path / "big", {BIG: data}))
    mirror = HubMirror([big], faults=Faults(drop_after={BIG: chunk + 1_000_000})).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", mirror.url)
        _fetch(_catalog(manifests, big), tmp_path / "store")
    finally:
        mirror.stop()
    assert (tmp_path / "store" / "m" / BIG).read_bytes() == data
    assert _downloads(mirror, BIG) == [None, f"bytes={chunk}-"]


def test_modelscope_wrong_listing_sha_refused(hub, manifests, repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    hub(Faults(wrong_sha256={BIG}))
    with pytest.raises(IntegrityError) as err:
        _fetch(_catalog(manifests, repo, "modelscope"), tmp_path / "store", retries=0)
    assert err.value.path == BIG


@pytest.mark.parametrize(
    "entry",
    [
        {"path": "../etc/passwd", "size": 10},
        {"path": "/etc/passwd", "size": 10},
        {"path": "config.json", "size": 10},  # a duplicate
    ],
)
@pytest.mark.parametrize("kind", ["hf", "modelscope"])
def test_hostile_listing_refused(hub, manifests, repo, tmp_path, entry, kind) -> None:  # type: ignore[no-untyped-def]
    hub(Faults(extra_listing=[entry]))
    with pytest.raises(UnsafePathError):
        _fetch(_catalog(manifests, repo, kind), tmp_path / "store")
    assert not (tmp_path / "store" / "m").exists()


def test_gated_unknown_revision_and_unreachable(hub, manifests, repo, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    hub(Faults(status={REPO: 401}))
    catalog = _catalog(manifests, repo)
    with pytest.raises(AccessDeniedError, match="HF_TOKEN"):
        _fetch(catalog, tmp_path / "store")
    hub()
    with pytest.raises(RevisionNotFoundError):
        _fetch(_catalog(manifests, repo, revision="f" * 40), tmp_path / "store")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HubUnreachableError, match="HF_ENDPOINT"):
        _fetch(_catalog(manifests, repo), tmp_path / "store")


def test_disk_full_refused_before_downloading(hub, manifests, repo, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import shutil
    from collections import namedtuple

    mirror = hub()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10**9, 10**9, 1000))
    with pytest.raises(DiskFullError, match="GB free"):
        _fetch(_catalog(manifests, repo), tmp_path / "store")
    assert _downloads(mirror, BIG) == []


class _Interrupted(HFSource):
    def __init__(self, manifest, budget: int) -> None:  # type: ignore[no-untyped-def]
        super().__init__(manifest)
        self.budget = budget

    def download(self, commit, file, workdir):  # type: ignore[no-untyped-def]
        if self.budget == 0:
            raise KeyboardInterrupt
        self.budget -= 1
        return super().download(commit, file, workdir)


def test_interrupted_hub_fetch_redownloads_no_finished_file(hub, manifests, repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    mirror = hub()
    catalog = _catalog(manifests, repo)
    manifest, store = catalog.model("m"), tmp_path / "store"
    options = FetchOptions(workers=1)
    with pytest.raises(KeyboardInterrupt):
        ModelFetch(manifest, catalog.lock_path("m"), store, options, source=_Interrupted(manifest, 2)).run()
    done = [p for p in FILES if _downloads(mirror, p)]
    assert len(done) == 2
    ModelFetch(manifest, catalog.lock_path("m"), store, options).run()
    for path in FILES:
        assert len(_downloads(mirror, path)) == 1, path  # each file's bytes crossed the wire once


def test_forbidden_file_is_access_denied_not_offline(hub, manifests, repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    hub(Faults(status={"config.json": 403}))
    with pytest.raises(AccessDeniedError):
        _fetch(_catalog(manifests, repo), tmp_path / "store")


def test_partial_file_of_an_interrupted_run_is_resumed_by_the_next(hub, manifests, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Ctrl-C in the middle of a big file keeps the bytes written; the next run asks only for the rest."""
    from huggingface_hub import constants

    from appliance.store.sources import hf

    chunk = constants.DOWNLOAD_CHUNK_SIZE
    data = random.Random(2).randbytes(chunk + 3_000_000)
    big = repo_from_dir(REPO, make_files(tmp_path / "big", {BIG: data}))
    catalog = _catalog(manifests, big)
    write = hf._HashingSink.write

    def interrupted(self, piece: bytes) -> int:  # type: ignore[no-untyped-def]
        if self.handle.tell() >= chunk:
            raise KeyboardInterrupt
        return write(self, piece)

    mirror = HubMirror([big]).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", mirror.url)
        monkeypatch.setattr(hf._HashingSink, "write", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _fetch(catalog, tmp_path / "store")
        monkeypatch.setattr(hf._HashingSink, "write", write)
        _fetch(catalog, tmp_path / "store")
    finally:
        mirror.stop()
    assert _downloads(mirror, BIG) == [None, f"bytes={chunk}-"]
    assert (tmp_path / "store" / "m" / BIG).read_bytes() == data
