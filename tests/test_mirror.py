"""The local hub mirror, driven by the real huggingface_hub and modelscope clients."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from appliance.mirror import Faults, HubMirror, MirrorRepo, repo_from_dir
from appliance.mirror.repo import git_blob_sha1
from appliance.mirror.transfer import Unsatisfiable, parse_range

REPO = "org/tiny"
BIG = "model.safetensors"
BIG_SIZE = 2 * 1024 * 1024 + 123


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "tiny"}\n')
    (root / "tokenizer.json").write_text('{"version": "1.0", "vocab": {"a": 0}}\n')
    (root / "sub" / "notes.txt").write_text("layout model lives here\n")
    (root / BIG).write_bytes(random.Random(0).randbytes(BIG_SIZE))
    return root


@pytest.fixture
def tiny(repo_dir: Path) -> MirrorRepo:
    return repo_from_dir(REPO, repo_dir)


@pytest.fixture
def hf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Point huggingface_hub (already imported, so its constants are frozen) at a mirror."""
    from huggingface_hub import constants

    def use(mirror: HubMirror) -> Path:
        home = tmp_path / "hf-home"
        monkeypatch.setenv("HF_ENDPOINT", mirror.url)
        monkeypatch.setenv("HF_HOME", str(home))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setattr(constants, "ENDPOINT", mirror.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", mirror.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HOME", str(home))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
        monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
        monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / ".agent_harnesses.json"))
        return home / "hub"

    return use


@pytest.fixture
def ms(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Point modelscope (process-wide config built lazily from the environment) at a mirror."""
    import modelscope_hub.config

    def use(mirror: HubMirror) -> Path:
        cache = tmp_path / "ms-cache"
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", mirror.url)
        monkeypatch.setenv("MODELSCOPE_CACHE", str(cache))
        monkeypatch.setenv("MODELSCOPE_HOME", str(tmp_path / "ms-home"))
        monkeypatch.delenv("MODELSCOPE_API_TOKEN", raising=False)
        monkeypatch.setattr(modelscope_hub.config, "_default_config", None)
        return cache

    return use


def gets(mirror: HubMirror, fragment: str) -> list[tuple[str, str | None]]:
    return [(r.path, r.range) for r in mirror.requests if r.method == "GET" and fragment in r.path]


# -- repo model ----------------------------------------------------------------------------------
def test_repo_from_dir_hashes_and_commit_is_deterministic(repo_dir: Path, tiny: MirrorRepo) -> None:
    assert [f.path for f in tiny.files] == ["config.json", BIG, "sub/notes.txt", "tokenizer.json"]
    big = next(f for f in tiny.files if f.path == BIG)
    assert big.size == BIG_SIZE
    assert big.sha256 == hashlib.sha256((repo_dir / BIG).read_bytes()).hexdigest()
    assert len(tiny.commit) == 40 and int(tiny.commit, 16) >= 0
    assert tiny.branches == {"main": tiny.commit}
    assert repo_from_dir(REPO, repo_dir).commit == tiny.commit
    (repo_dir / "config.json").write_text("{}\n")
    assert repo_from_dir(REPO, repo_dir).commit != tiny.commit


def test_range_parsing() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=4-", 10) == (4, 10)
    assert parse_range("bytes=2-5", 10) == (2, 6)
    assert parse_range("bytes=2-50", 10) == (2, 10)
    assert parse_range("bytes=-3", 10) == (7, 10)
    assert parse_range("bytes=0-1,4-5", 10) is None  # multi-range: whole file
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=10-", 10)


def test_resolve_headers_and_ranges(tiny: MirrorRepo, repo_dir: Path) -> None:
    with HubMirror([tiny]) as mirror:
        head = httpx.head(f"{mirror.url}/{REPO}/resolve/main/{BIG}")
        small = httpx.head(f"{mirror.url}/{REPO}/resolve/main/config.json")
        part = httpx.get(f"{mirror.url}/{REPO}/resolve/{tiny.commit}/{BIG}", headers={"Range": "bytes=100-"})
        past = httpx.get(f"{mirror.url}/{REPO}/resolve/main/config.json", headers={"Range": "bytes=9999-"})
    big = (repo_dir / BIG).read_bytes()
    assert head.headers["X-Repo-Commit"] == tiny.commit
    assert head.headers["ETag"] == f'"{hashlib.sha256(big).hexdigest()}"'
    assert head.headers["Content-Length"] == str(BIG_SIZE)
    assert head.headers["Accept-Ranges"] == "bytes"
    assert small.headers["ETag"] == f'"{git_blob_sha1((repo_dir / "config.json").read_bytes())}"'
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 100-{BIG_SIZE - 1}/{BIG_SIZE}"
    assert part.content == big[100:]
    assert past.status_code == 416


# -- Hugging Face client -------------------------------------------------------------------------
def test_hf_snapshot_download_identical_bytes(tiny: MirrorRepo, repo_dir: Path, hf) -> None:
    from huggingface_hub import HfApi, snapshot_download

    with HubMirror([tiny]) as mirror:
        cache = hf(mirror)
        folder = Path(snapshot_download(REPO, revision="main"))
        info = HfApi().model_info(REPO, revision="main")
    assert folder == cache / "models--org--tiny" / "snapshots" / tiny.commit
    for f in tiny.files:
        assert (folder / f.path).read_bytes() == (repo_dir / f.path).read_bytes(), f.path
    assert (cache / "models--org--tiny" / "refs" / "main").read_text() == tiny.commit
    assert info.sha == tiny.commit
    assert {s.rfilename for s in info.siblings} == {f.path for f in tiny.files}
    assert gets(mirror, "/api/models/org/tiny/revision/main")
    assert gets(mirror, f"/api/models/org/tiny/tree/{tiny.commit}")


def test_hf_hub_download_identical_bytes(tiny: MirrorRepo, repo_dir: Path, hf, tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download

    with HubMirror([tiny]) as mirror:
        hf(mirror)
        path = hf_hub_download(REPO, BIG, revision="main")
        local = hf_hub_download(REPO, "sub/notes.txt", revision=tiny.commit, local_dir=tmp_path / "out")
    assert Path(path).read_bytes() == (repo_dir / BIG).read_bytes()
    assert Path(local).read_bytes() == (repo_dir / "sub/notes.txt").read_bytes()


def test_hf_list_repo_tree_has_lfs_sha256(tiny: MirrorRepo, repo_dir: Path, hf) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile, RepoFolder

    with HubMirror([tiny]) as mirror:
        hf(mirror)
        entries = {e.path: e for e in HfApi().list_repo_tree(REPO, recursive=True, revision="main")}
        paths_info = HfApi().get_paths_info(REPO, ["config.json", "sub", "absent"], revision="main")
    assert isinstance(entries["sub"], RepoFolder)
    big = entries[BIG]
    assert isinstance(big, RepoFile) and big.lfs is not None
    assert big.lfs.sha256 == hashlib.sha256((repo_dir / BIG).read_bytes()).hexdigest()
    assert big.lfs.size == BIG_SIZE
    config = entries["config.json"]
    assert config.lfs is None and config.blob_id == git_blob_sha1((repo_dir / "config.json").read_bytes())
    assert entries["sub/notes.txt"].size == len("layout model lives here\n")
    assert [p.path for p in paths_info] == ["config.json", "sub"]


def test_hf_cdn_redirect_for_lfs(tiny: MirrorRepo, repo_dir: Path, hf) -> None:
    from huggingface_hub import hf_hub_download

    with HubMirror([tiny], cdn_host="localhost") as mirror:
        hf(mirror)
        path = hf_hub_download(REPO, BIG, revision="main")
    assert Path(path).read_bytes() == (repo_dir / BIG).read_bytes()
    assert [r.method for r in mirror.requests if "/resolve/" in r.path] == ["HEAD"]
    assert len(gets(mirror, "/cdn-lfs/")) == 1


def test_hf_flip_byte_changes_one_byte(tiny: MirrorRepo, repo_dir: Path, hf) -> None:
    from huggingface_hub import hf_hub_download

    with HubMirror([tiny], faults=Faults(flip_byte={BIG})) as mirror:
        hf(mirror)
        got = Path(hf_hub_download(REPO, BIG, revision="main")).read_bytes()
    want = (repo_dir / BIG).read_bytes()
    assert len(got) == len(want)
    assert [i for i in range(len(want)) if got[i] != want[i]] == [BIG_SIZE // 2]


def test_hf_resume_after_dropped_connection(tmp_path: Path, hf) -> None:
    from huggingface_hub import constants, hf_hub_download

    # huggingface_hub 2.4 writes in DOWNLOAD_CHUNK_SIZE (10 MiB) pieces and resumes inside the same
    # call (after a 1 s pause) from what it wrote: a drop past the first piece shows the Range.
    chunk = constants.DOWNLOAD_CHUNK_SIZE
    src = tmp_path / "big"
    src.mkdir()
    (src / BIG).write_bytes(random.Random(1).randbytes(chunk + 2 * 1024 * 1024))
    repo = repo_from_dir(REPO, src)
    url = f"/{REPO}/resolve/{repo.commit}/{BIG}"
    faults = Faults(drop_after={(REPO, BIG): chunk + 1024 * 1024}, drop_times=1)
    with HubMirror([repo], faults=faults) as mirror:
        hf(mirror)
        path = hf_hub_download(REPO, BIG, revision=repo.commit)
        assert gets(mirror, url) == [(url, None), (url, f"bytes={chunk}-")]
        seen = len(mirror.requests)
        again = hf_hub_download(REPO, BIG, revision=repo.commit)
        assert mirror.requests[seen:] == []  # a finished file pinned by commit is never re-requested
    assert Path(path).read_bytes() == (src / BIG).read_bytes()
    assert again == path


def test_hf_hostile_listing_entries_are_listed(tiny: MirrorRepo, hf) -> None:
    from huggingface_hub import HfApi

    hostile = [
        {"path": "../etc/passwd", "size": 10},
        {"path": "/etc/shadow"},
        {"path": "config.json", "size": 1},
    ]
    with HubMirror([tiny], faults=Faults(extra_listing=hostile)) as mirror:
        hf(mirror)
        paths = [e.path for e in HfApi().list_repo_tree(REPO, recursive=True, revision="main")]
    assert "../etc/passwd" in paths and "/etc/shadow" in paths
    assert paths.count("config.json") == 2


def test_hf_wrong_sha256_in_listing(tiny: MirrorRepo, hf) -> None:
    from huggingface_hub import HfApi

    with HubMirror([tiny], faults=Faults(wrong_sha256={BIG})) as mirror:
        hf(mirror)
        big = next(e for e in HfApi().list_repo_tree(REPO, recursive=True) if e.path == BIG)
    real = next(f for f in tiny.files if f.path == BIG).sha256
    assert big.lfs.sha256 != real and len(big.lfs.sha256) == 64


@pytest.mark.parametrize(
    ("faults", "repo", "revision", "filename", "error"),
    [
        ({}, REPO, "nope", "config.json", "RevisionNotFoundError"),
        ({f"{REPO}@main": 404}, REPO, "main", "config.json", "RevisionNotFoundError"),
        ({}, "org/missing", "main", "config.json", "RepositoryNotFoundError"),
        ({REPO: 404}, REPO, "main", "config.json", "RepositoryNotFoundError"),
        ({REPO: 401}, REPO, "main", "config.json", "GatedRepoError"),
        ({}, REPO, "main", "absent.json", "RemoteEntryNotFoundError"),
        ({(REPO, "config.json"): 404}, REPO, "main", "config.json", "RemoteEntryNotFoundError"),
    ],
)
def test_hf_errors_are_typed(tiny: MirrorRepo, hf, faults, repo, revision, filename, error) -> None:
    import huggingface_hub.errors as errors
    from huggingface_hub import hf_hub_download

    with HubMirror([tiny], faults=Faults(status=faults)) as mirror:
        hf(mirror)
        with pytest.raises(getattr(errors, error)):
            hf_hub_download(repo, filename, revision=revision)


def test_hf_snapshot_errors_are_typed(tiny: MirrorRepo, hf) -> None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    with HubMirror([tiny], faults=Faults(status={"org/gated": 401})) as mirror:
        hf(mirror)
        with pytest.raises(GatedRepoError):
            snapshot_download("org/gated")
        with pytest.raises(RepositoryNotFoundError):
            snapshot_download("org/missing")
        with pytest.raises(RevisionNotFoundError):
            snapshot_download(REPO, revision="nope")


def test_truncate_sends_short_body_then_closes(tiny: MirrorRepo) -> None:
    with HubMirror([tiny], faults=Faults(truncate={BIG})) as mirror:
        received = bytearray()
        with (
            pytest.raises(httpx.RemoteProtocolError),
            httpx.stream("GET", f"{mirror.url}/{REPO}/resolve/main/{BIG}") as response,
        ):
            assert response.headers["Content-Length"] == str(BIG_SIZE)
            for chunk in response.iter_bytes():
                received += chunk
    assert len(received) == BIG_SIZE // 2


@pytest.mark.slow
def test_hf_gives_up_on_a_persistently_truncated_file(tiny: MirrorRepo, hf) -> None:
    import httpx2
    from huggingface_hub import hf_hub_download

    with HubMirror([tiny], faults=Faults(truncate={BIG})) as mirror:
        hf(mirror)
        with pytest.raises(httpx2.RemoteProtocolError):  # after 5 retries, 1 s apart
            hf_hub_download(REPO, BIG, revision=tiny.commit)
    assert len(gets(mirror, f"/resolve/{tiny.commit}/{BIG}")) == 6


def test_hf_stopped_mirror_refuses_connections(tiny: MirrorRepo, hf) -> None:
    import httpx2  # huggingface_hub 2.x's HTTP stack
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    mirror = HubMirror([tiny]).start()
    hf(mirror)
    mirror.stop()
    with pytest.raises(LocalEntryNotFoundError) as caught:
        snapshot_download(REPO, revision="main")
    assert isinstance(caught.value.__cause__, httpx2.ConnectError)


# -- ModelScope client ---------------------------------------------------------------------------
def test_modelscope_snapshot_download_identical_bytes(tiny: MirrorRepo, repo_dir: Path, ms) -> None:
    from modelscope.hub.snapshot_download import snapshot_download

    with HubMirror([tiny]) as mirror:
        cache = ms(mirror)
        folder = Path(snapshot_download(REPO, revision=tiny.commit))
    assert folder == cache / "models" / "org--tiny" / "snapshots" / tiny.commit
    for f in tiny.files:
        assert (folder / f.path).read_bytes() == (repo_dir / f.path).read_bytes(), f.path
    assert gets(mirror, "/api/v1/models/org/tiny/repo/files?")
    assert gets(mirror, "/api/v1/repos/internalAccelerationInfo")


def test_modelscope_wrong_sha256_is_a_hash_mismatch(tiny: MirrorRepo, ms) -> None:
    from modelscope.hub.snapshot_download import snapshot_download
    from modelscope_hub.errors import FileDownloadError, FileIntegrityError

    with HubMirror([tiny], faults=Faults(wrong_sha256={"config.json"})) as mirror:
        ms(mirror)
        with pytest.raises(FileDownloadError) as caught:
            snapshot_download(REPO, revision=tiny.commit)
    failure = caught.value.failed_files["config.json"]
    assert isinstance(failure, FileIntegrityError) and "Hash mismatch" in str(failure)
    assert list(caught.value.failed_files) == ["config.json"]


def test_modelscope_resumes_partial_file_with_range(
    tiny: MirrorRepo, repo_dir: Path, ms, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelscope_hub._download
    from modelscope.hub.snapshot_download import snapshot_download
    from modelscope_hub.errors import FileDownloadError

    # No in-call retries, so the partial file has to survive into the next call.
    monkeypatch.setattr(modelscope_hub._download, "DOWNLOAD_RETRY_TIMES", 0)
    faults = Faults(drop_after={BIG: 700_000}, drop_times=1)
    with HubMirror([tiny], faults=faults) as mirror:
        cache = ms(mirror)
        with pytest.raises(FileDownloadError):
            snapshot_download(REPO, revision=tiny.commit)
        snapshot = cache / "models" / "org--tiny" / "snapshots" / tiny.commit
        assert (snapshot / f"{BIG}.incomplete").stat().st_size == 700_000
        folder = Path(snapshot_download(REPO, revision=tiny.commit))
    assert [r for _, r in gets(mirror, f"FilePath={BIG}")] == [None, "bytes=700000-"]
    assert (folder / BIG).read_bytes() == (repo_dir / BIG).read_bytes()
    assert len(gets(mirror, "FilePath=config.json")) == 1  # finished files are not fetched again


def test_modelscope_hostile_listing_entries_are_listed(tiny: MirrorRepo, ms) -> None:
    from modelscope_hub import HubApi

    hostile = [{"path": "../etc/passwd", "sha256": "0" * 64}, {"path": "/abs/file"}]
    with HubMirror([tiny], faults=Faults(extra_listing=hostile)) as mirror:
        ms(mirror)
        paths = [f.path for f in HubApi().list_repo_files(REPO, "model", revision="main")]
    assert "../etc/passwd" in paths and "/abs/file" in paths


@pytest.mark.parametrize(
    ("faults", "repo", "cause"),
    [
        ({}, "org/missing", "NotExistError"),
        ({f"{REPO}@main": 404}, REPO, "NotExistError"),
        ({REPO: 401}, REPO, "AuthenticationError"),
        ({REPO: 403}, REPO, "PermissionDeniedError"),
    ],
)
def test_modelscope_errors(tiny: MirrorRepo, ms, faults, repo, cause) -> None:
    import modelscope_hub.errors as errors
    import requests
    from modelscope.hub.snapshot_download import snapshot_download

    with HubMirror([tiny], faults=Faults(status=faults)) as mirror:
        ms(mirror)
        # The legacy entry point re-raises these as requests' HTTPError, the typed error as cause.
        with pytest.raises(requests.exceptions.HTTPError) as caught:
            snapshot_download(repo, revision="main")
    assert isinstance(caught.value.__cause__, getattr(errors, cause))


def test_client_env_drives_both_clients_in_a_child_process(tiny: MirrorRepo, repo_dir: Path, tmp_path: Path) -> None:
    child = f"""
import sys
from huggingface_hub import hf_hub_download
from modelscope.hub.file_download import model_file_download
print(hf_hub_download("{REPO}", "config.json", revision="main"))
print(model_file_download("{REPO}", "sub/notes.txt", revision="main"))
"""
    with HubMirror([tiny]) as mirror:
        env = {**os.environ, **mirror.client_env(tmp_path / "home")}
        out = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    hf_path, ms_path = (Path(line) for line in out.stdout.split())
    assert hf_path.is_relative_to(tmp_path / "home" / "hf") and ms_path.is_relative_to(tmp_path / "home")
    assert hf_path.read_bytes() == (repo_dir / "config.json").read_bytes()
    assert ms_path.read_bytes() == (repo_dir / "sub/notes.txt").read_bytes()
