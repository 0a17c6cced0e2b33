"""ModelScope hub protocol, as modelscope 1.40.2 (-> modelscope_hub 0.5.1) speaks it (models only).

All under `/api/v1/`, answers wrapped in `{"Code", "Data", "Message", "RequestId", "Success"}`:

- `GET repos/internalAccelerationInfo` -> 404 (the client then asks for no region routing);
- `GET models/{owner}/{name}/repo/files?Revision=&Recursive=&Root=` -> `Data.Files` entries with
  `Path`, `Name`, `Type` (blob | tree), `Size`, `Sha256`, `Revision` — the client checks every
  downloaded file against `Sha256` and `Size`;
- `GET|HEAD models/{owner}/{name}/repo?Revision=&FilePath=` -> raw bytes, 206 for `Range` (the
  client resumes `<target>.incomplete` with `Range: bytes=N-`); with a CDN host, LFS files 302;
- `GET models/{owner}/{name}` (repo info) and `.../revisions` (branches).

Errors are JSON bodies with the HTTP status (401 / 403 / 404) which modelscope_hub maps to
AuthenticationError / PermissionDeniedError / NotExistError.

The client's default revision is "master", not "main": pass a commit (or serve a "master" branch).
The client honours `MODELSCOPE_ENDPOINT`, read once into a process-wide config
(`modelscope_hub.config.get_default_config()`), so set it before the first call or reset that.
"""

from __future__ import annotations

import uuid
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from .faults import extra_entries, forced_status, hits, wrong_hash
from .repo import MirrorFile, MirrorRepo, is_lfs, list_tree

if TYPE_CHECKING:
    from .server import HubMirror, _Handler

_DEFAULT_REVISION = "master"  # the client's default, when the caller gives none


def handle(h: _Handler, mirror: HubMirror, segments: list[str], query: dict[str, str]) -> None:
    if segments == ["repos", "internalAccelerationInfo"]:
        _error(h, 404, "Not Found")
        return
    if segments[:1] != ["models"] or len(segments) < 3:
        _error(h, 404, "Not Found")
        return
    repo_id, tail = f"{segments[1]}/{segments[2]}", segments[3:]
    revision = query.get("Revision") or _DEFAULT_REVISION
    if tail == [] and h.method == "GET":
        _repo_info(h, mirror, repo_id)
    elif tail == ["revisions"] and h.method == "GET":
        _revisions(h, mirror, repo_id)
    elif tail == ["repo", "files"] and h.method == "GET":
        _files(h, mirror, repo_id, revision, query.get("Root", ""), query.get("Recursive", "").lower() == "true")
    elif tail == ["repo"] and h.method in ("GET", "HEAD"):
        _raw(h, mirror, repo_id, revision, query.get("FilePath", "").lstrip("/"))
    else:
        _error(h, 404, "Not Found")


def _ok(h: _Handler, data: Any) -> None:
    h.send_json(200, {"Code": 200, "Data": data, "Message": "success", "RequestId": uuid.uuid4().hex, "Success": True})


def _error(h: _Handler, status: int, message: str) -> None:
    h.send_json(
        status,
        {"Code": status, "Data": None, "Message": message, "RequestId": uuid.uuid4().hex, "Success": False},
    )


def _open_repo(
    h: _Handler, mirror: HubMirror, repo_id: str, revision: str | None, path: str | None = None
) -> tuple[MirrorRepo, str] | None:
    """(repo, commit), or None once an error has been answered."""
    if forced := forced_status(mirror.faults, repo_id, revision, path):
        _error(h, forced[0], f"forced {forced[0]} for {forced[1]}")
        return None
    repo = mirror.repo(repo_id)
    if repo is None:
        _error(h, 404, f"model {repo_id} does not exist")
        return None
    commit = mirror.resolve(repo, revision) if revision is not None else repo.commit
    if commit is None:
        _error(h, 404, f"revision {revision} does not exist in {repo_id}")
        return None
    return repo, commit


def _repo_info(h: _Handler, mirror: HubMirror, repo_id: str) -> None:
    if _open_repo(h, mirror, repo_id, None) is None:
        return
    owner, name = repo_id.split("/")
    _ok(h, {"Name": name, "Path": owner, "ChineseName": "", "Visibility": 5, "IsPublished": 1})


def _revisions(h: _Handler, mirror: HubMirror, repo_id: str) -> None:
    if (opened := _open_repo(h, mirror, repo_id, None)) is None:
        return
    branches = [
        {"Revision": name, "CommitId": commit, "CreatedAt": 0, "Description": ""}
        for name, commit in opened[0].branches.items()
    ]
    _ok(h, {"RevisionMap": {"Branches": branches, "Tags": []}})


def _files(h: _Handler, mirror: HubMirror, repo_id: str, revision: str, root: str, recursive: bool) -> None:
    if (opened := _open_repo(h, mirror, repo_id, revision)) is None:
        return
    repo, commit = opened
    listing = list_tree(repo.files, root, recursive)
    if listing is None:
        _error(h, 404, f"{root} does not exist")
        return
    dirs, files = listing
    entries = [_dir_entry(commit, d) for d in dirs] + [_file_entry(mirror, repo_id, commit, f) for f in files]
    if not root.strip("/"):
        entries += [_extra_entry(commit, e) for e in extra_entries(mirror.faults, repo_id)]
    _ok(h, {"Files": entries})


def _raw(h: _Handler, mirror: HubMirror, repo_id: str, revision: str, path: str) -> None:
    if _open_repo(h, mirror, repo_id, revision, path) is None:
        return
    f = mirror.file(repo_id, path)
    if f is None:
        _error(h, 404, f"file {path} does not exist")
    elif is_lfs(f) and mirror.cdn_host:
        h.send_redirect(f"{mirror.cdn_url}/cdn-lfs/{f.sha256}?{urlencode({'repo': repo_id, 'path': f.path})}", {})
    else:
        h.send_file(mirror, repo_id, f, {})


def _file_entry(mirror: HubMirror, repo_id: str, commit: str, f: MirrorFile) -> dict[str, Any]:
    sha = wrong_hash(f.sha256) if hits(mirror.faults.wrong_sha256, repo_id, f.path) else f.sha256
    return {
        "Name": PurePosixPath(f.path).name,
        "Path": f.path,
        "Type": "blob",
        "Size": f.size,
        "Sha256": sha,
        "Revision": commit,
        "CommitId": commit,
        "IsLFS": is_lfs(f),
        "Mode": "100644",
    }


def _dir_entry(commit: str, path: str) -> dict[str, Any]:
    return {
        "Name": PurePosixPath(path).name,
        "Path": path,
        "Type": "tree",
        "Size": 0,
        "Sha256": "",
        "Revision": commit,
        "CommitId": commit,
        "IsLFS": False,
        "Mode": "040000",
    }


def _extra_entry(commit: str, e: dict[str, Any]) -> dict[str, Any]:
    path = str(e["path"])
    entry = {
        "Name": PurePosixPath(path).name,
        "Path": path,
        "Type": "tree" if e.get("type") == "directory" else "blob",
        "Size": int(e.get("size", 0)),
        "Sha256": e.get("sha256", ""),
        "Revision": commit,
        "CommitId": commit,
        "IsLFS": False,
        "Mode": "100644",
    }
    entry.update(e.get("modelscope", {}))
    return entry
