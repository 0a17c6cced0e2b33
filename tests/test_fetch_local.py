"""fetch from dir: and tar: sources — the whole fetch machinery without any hub."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from appliance.errors import IntegrityError, LockError, UnsafePathError
from appliance.store.fetch import FetchOptions, ModelFetch, fetch_model
from appliance.store.lock import read_lock
from appliance.store.sources.local import LocalSource
from appliance.store.verify import verify_deep
from tests.conftest import ManifestDir, make_files

FILES = {
    "config.json": b'{"a": 1}',
    "model.safetensors": os.urandom(200_000),
    "PP-DocLayoutV2/inference.yml": b"Global: {model_name: PP-DocLayoutV2}\n",
}
BODY = """
engine: paddleocr-vl
source: {source}
serve: {{served_model_name: X}}
resources: {{weight_bytes: 1}}
"""


@pytest.fixture
def setup(tmp_path: Path, manifests: ManifestDir):  # type: ignore[no-untyped-def]
    src = make_files(tmp_path / "src", FILES)
    manifests.model("m", BODY.format(source=f"dir:{src}"))
    catalog = manifests.catalog()
    return catalog, src, tmp_path / "store"


def _fetch(catalog, store: Path, **options):  # type: ignore[no-untyped-def]
    return fetch_model(catalog.model("m"), catalog.lock_path("m"), store, FetchOptions(**options))


def test_dir_fetch_writes_lock_then_is_up_to_date(setup) -> None:  # type: ignore[no-untyped-def]
    catalog, _src, store = setup
    report = _fetch(catalog, store)
    assert report.lock_written and report.files == 3 and not report.up_to_date
    lock = read_lock(catalog.lock_path("m"))
    assert lock is not None and len(lock.commit) == 40
    assert {f.path for f in lock.files} == set(FILES)
    assert verify_deep(store / "m", lock) == []
    assert not (store / ".staging").exists()
    again = _fetch(catalog, store, frozen=True)
    assert again.up_to_date and not again.lock_written


def test_frozen_refuses_missing_or_disagreeing_lock(setup, manifests: ManifestDir) -> None:  # type: ignore[no-untyped-def]
    catalog, src, store = setup
    with pytest.raises(LockError, match="--frozen never creates one"):
        _fetch(catalog, store, frozen=True)
    _fetch(catalog, store)
    manifests.model("m", BODY.format(source=f"dir:{src}") + "exclude: ['*.yml']\n")
    with pytest.raises(LockError, match="include/exclude patterns changed"):
        _fetch(manifests.catalog(), store, frozen=True)


def test_changed_source_bytes_never_replace_the_good_store(setup) -> None:  # type: ignore[no-untyped-def]
    catalog, src, store = setup
    _fetch(catalog, store)
    good = (store / "m" / "model.safetensors").read_bytes()
    (store / "m" / "config.json").unlink()  # force a re-fetch of that file
    (src / "config.json").write_bytes(b'{"a": 2}')  # same size, other bytes
    with pytest.raises(IntegrityError) as err:
        _fetch(catalog, store, retries=1)
    assert err.value.path == "config.json" and "lock says" in str(err.value) and "2 attempts" in str(err.value)
    assert (store / "m" / "model.safetensors").read_bytes() == good  # the good store is untouched
    assert not (store / "m" / "config.json").exists()


def test_tarball_source_with_top_folder(setup, tmp_path: Path, manifests: ManifestDir) -> None:  # type: ignore[no-untyped-def]
    _catalog, src, store = setup
    archive = tmp_path / "m.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="m")
    manifests.model("m", BODY.format(source=f"tar:{archive}"))
    catalog = manifests.catalog()
    _fetch(catalog, store)
    assert (store / "m" / "PP-DocLayoutV2" / "inference.yml").read_bytes() == FILES["PP-DocLayoutV2/inference.yml"]


def test_tarball_with_link_member_refused(tmp_path: Path, manifests: ManifestDir) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("config.json")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    manifests.model("m", BODY.format(source=f"tar:{archive}"))
    with pytest.raises(UnsafePathError, match="link"):
        _fetch(manifests.catalog(), tmp_path / "store")


def test_dir_symlink_leaving_the_model_refused(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    catalog, src, store = setup
    (tmp_path / "secret").write_text("x")
    (src / "leak.txt").symlink_to(tmp_path / "secret")
    with pytest.raises(UnsafePathError, match="outside"):
        _fetch(catalog, store)


class _Flaky(LocalSource):
    """Dies after `budget` downloads: an interrupted fetch."""

    def __init__(self, manifest, budget: int) -> None:  # type: ignore[no-untyped-def]
        super().__init__(manifest)
        self.budget = budget
        self.downloaded: list[str] = []

    def download(self, commit, file, workdir):  # type: ignore[no-untyped-def]
        if len(self.downloaded) >= self.budget:
            raise KeyboardInterrupt
        self.downloaded.append(file.path)
        return super().download(commit, file, workdir)


def test_interrupted_fetch_resumes_without_redownloading(setup) -> None:  # type: ignore[no-untyped-def]
    catalog, _src, store = setup
    manifest = catalog.model("m")
    first = _Flaky(manifest, budget=2)
    with pytest.raises(KeyboardInterrupt):
        ModelFetch(manifest, catalog.lock_path("m"), store, FetchOptions(workers=1), source=first).run()
    assert not (store / "m").exists() and len(first.downloaded) == 2
    second = _Flaky(manifest, budget=99)
    ModelFetch(manifest, catalog.lock_path("m"), store, FetchOptions(workers=1), source=second).run()
    assert sorted(first.downloaded + second.downloaded) == sorted(FILES)  # each file exactly once
