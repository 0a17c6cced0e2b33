"""Hugging Face hub protocol, as huggingface_hub 2.4.0 speaks it (model repos only).

- `GET /api/models/{repo}[/revision/{rev}]` -> model info with `sha` (and `siblings`);
- `GET /api/models/{repo}/tree/{rev}[/{folder}]?recursive=&expand=` -> one page (no `Link` header);
- `POST /api/models/{repo}/paths-info/{rev}` (form `paths=`) -> entries for those paths;
- `HEAD|GET /{repo}/resolve/{rev}/{path}` -> bytes, `X-Repo-Commit`, `ETag` (sha256 for LFS files,
  git blob sha1 otherwise), `Accept-Ranges`, 206 for `Range`; with a CDN host, LFS files 302 there
  carrying `X-Linked-Etag` / `X-Linked-Size` as the real hub does;
- `GET /api/agent-harnesses` -> 404 (the client then detects no agent).

Errors carry `X-Error-Code` (RepoNotFound / RevisionNotFound / EntryNotFound / GatedRepo), which
huggingface_hub's `hf_raise_for_status` turns into its typed errors. No Xet headers are ever sent,
so the client downloads over plain HTTP.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from .faults import extra_entries, forced_status, hits, wrong_hash
from .repo import MirrorFile, MirrorRepo, git_blob_sha1, is_lfs, lfs_pointer, list_tree

if TYPE_CHECKING:
    from .server import HubMirror, _Handler

_EPOCH = "2024-01-01T00:00:00.000Z"
_NOT_FOUND = {  # what a forced 404 names -> (X-Error-Code, message)
    "repo": ("RepoNotFound", "Repository not found"),
    "revision": ("RevisionNotFound", "Invalid rev id"),
    "entry": ("EntryNotFound", "Entry not found"),
}


def handle(h: _Handler, mirror: HubMirror, segments: list[str], query: dict[str, str]) -> None:
    if segments[:1] == ["api"]:
        _api(h, mirror, segments[1:], query)
        return
    repo_id, rest = _split_repo(mirror, segments, marker="resolve")
    if rest[:1] == ["resolve"] and len(rest) >= 3 and h.method in ("GET", "HEAD"):
        _resolve(h, mirror, repo_id, rest[1], "/".join(rest[2:]))
        return
    _error(h, 404, None, "Not Found")


def _api(h: _Handler, mirror: HubMirror, segments: list[str], query: dict[str, str]) -> None:
    kind, rest = (segments[0], segments[1:]) if segments else ("", [])
    if kind != "models" or not rest:
        if kind in ("datasets", "spaces", "kernels") and rest:
            _error(h, 404, "RepoNotFound", "Repository not found")  # only model repos are mirrored
        else:
            _error(h, 404, None, "Not Found")  # /api/agent-harnesses and anything else
        return
    repo_id, tail = _split_repo(mirror, rest, marker=None)
    if not tail and h.method == "GET":
        _model_info(h, mirror, repo_id, None, query)
    elif tail[:1] == ["revision"] and len(tail) >= 2 and h.method == "GET":
        _model_info(h, mirror, repo_id, "/".join(tail[1:]), query)
    elif tail[:1] == ["tree"] and len(tail) >= 2 and h.method == "GET":
        _tree(h, mirror, repo_id, tail[1], "/".join(tail[2:]), query.get("recursive", "").lower() == "true")
    elif tail[:1] == ["paths-info"] and len(tail) == 2 and h.method == "POST":
        _paths_info(h, mirror, repo_id, tail[1], parse_qs(h.body.decode()).get("paths", []))
    else:
        _error(h, 404, None, "Not Found")


def _split_repo(mirror: HubMirror, segments: list[str], marker: str | None) -> tuple[str, list[str]]:
    """Known repo id at the head of the path (ids are "org/name" or a bare "name")."""
    known = set(mirror.known_repo_ids())
    for n in (2, 1):
        if len(segments) >= n and "/".join(segments[:n]) in known:
            return "/".join(segments[:n]), segments[n:]
    n = 1 if marker is not None and segments[1:2] == [marker] else 2
    return "/".join(segments[:n]), segments[n:]


def _error(h: _Handler, status: int, code: str | None, message: str, headers: dict[str, str] | None = None) -> None:
    headers = dict(headers or {})
    if code:
        headers["X-Error-Code"] = code
    headers["X-Error-Message"] = message
    h.send_json(status, {"error": message}, headers)


def _open_repo(
    h: _Handler, mirror: HubMirror, repo_id: str, revision: str, path: str | None = None
) -> tuple[MirrorRepo, str] | None:
    """(repo, commit), or None once an error has been answered."""
    if forced := forced_status(mirror.faults, repo_id, revision, path):
        status, what = forced
        if status == 401:
            _error(
                h,
                401,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it "
                "and be authenticated to access it. Please log in.",
            )
        elif status == 404:
            _error(h, 404, *_NOT_FOUND[what])
        else:
            _error(h, status, None, f"Forced status {status}")
        return None
    repo = mirror.repo(repo_id)
    if repo is None:
        _error(h, 404, "RepoNotFound", "Repository not found")
        return None
    commit = mirror.resolve(repo, revision)
    if commit is None:
        _error(h, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return None
    return repo, commit


def _model_info(h: _Handler, mirror: HubMirror, repo_id: str, revision: str | None, query: dict[str, str]) -> None:
    repo = mirror.repo(repo_id)
    default = "main" if repo is None or "main" in repo.branches else next(iter(repo.branches), "main")
    if (opened := _open_repo(h, mirror, repo_id, revision or default)) is None:
        return
    repo, commit = opened
    with_blobs = query.get("blobs", "").lower() == "true"
    siblings = []
    for f in repo.files:
        sibling: dict[str, Any] = {"rfilename": f.path}
        if with_blobs:
            entry = _file_entry(mirror, repo_id, f)
            sibling.update(size=f.size, blobId=entry["oid"])
            if lfs := entry.get("lfs"):
                sibling["lfs"] = {
                    "sha256": lfs["oid"],
                    "size": lfs["size"],
                    "pointerSize": lfs["pointerSize"],
                }
        siblings.append(sibling)
    h.send_json(
        200,
        {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0] if "/" in repo_id else None,
            "sha": commit,
            "lastModified": _EPOCH,
            "createdAt": _EPOCH,
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(f.size for f in repo.files),
        },
    )


def _tree(h: _Handler, mirror: HubMirror, repo_id: str, revision: str, folder: str, recursive: bool) -> None:
    if (opened := _open_repo(h, mirror, repo_id, revision)) is None:
        return
    repo, commit = opened
    listing = list_tree(repo.files, folder, recursive)
    if listing is None:
        _error(h, 404, "EntryNotFound", f"{folder} does not exist on {revision}", {"X-Repo-Commit": commit})
        return
    dirs, files = listing
    entries = [_dir_entry(commit, d) for d in dirs] + [_file_entry(mirror, repo_id, f) for f in files]
    if not folder.strip("/"):
        entries += [_extra_entry(e) for e in extra_entries(mirror.faults, repo_id)]
    h.send_json(200, entries)


def _paths_info(h: _Handler, mirror: HubMirror, repo_id: str, revision: str, paths: list[str]) -> None:
    if (opened := _open_repo(h, mirror, repo_id, revision)) is None:
        return
    repo, commit = opened
    all_dirs, _ = list_tree(repo.files, "", recursive=True) or ([], [])
    entries = []
    for path in dict.fromkeys(p.strip("/") for p in paths):
        if (f := mirror.file(repo_id, path)) is not None:
            entries.append(_file_entry(mirror, repo_id, f))
        elif path in all_dirs:
            entries.append(_dir_entry(commit, path))
    h.send_json(200, entries)


def _resolve(h: _Handler, mirror: HubMirror, repo_id: str, revision: str, path: str) -> None:
    if (opened := _open_repo(h, mirror, repo_id, revision, path)) is None:
        return
    _, commit = opened
    f = mirror.file(repo_id, path)
    if f is None:
        # The commit header lets the client cache the file's absence for that commit.
        _error(h, 404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit})
        return
    if not is_lfs(f):
        h.send_file(mirror, repo_id, f, {"X-Repo-Commit": commit, "ETag": f'"{mirror.blob_id(f)}"'})
    elif mirror.cdn_host:
        location = f"{mirror.cdn_url}/cdn-lfs/{f.sha256}?{urlencode({'repo': repo_id, 'path': f.path})}"
        h.send_redirect(
            location,
            {
                "X-Repo-Commit": commit,
                "ETag": f'"{git_blob_sha1(lfs_pointer(f))}"',
                "X-Linked-Etag": f'"{f.sha256}"',
                "X-Linked-Size": str(f.size),
            },
        )
    else:
        h.send_file(mirror, repo_id, f, {"X-Repo-Commit": commit, "ETag": f'"{f.sha256}"'})


def _file_entry(mirror: HubMirror, repo_id: str, f: MirrorFile) -> dict[str, Any]:
    wrong = hits(mirror.faults.wrong_sha256, repo_id, f.path)
    if is_lfs(f):
        pointer = lfs_pointer(f)
        lfs = {
            "oid": wrong_hash(f.sha256) if wrong else f.sha256,
            "size": f.size,
            "pointerSize": len(pointer),
        }
        return {"type": "file", "oid": git_blob_sha1(pointer), "size": f.size, "path": f.path, "lfs": lfs}
    oid = mirror.blob_id(f)
    return {"type": "file", "oid": wrong_hash(oid) if wrong else oid, "size": f.size, "path": f.path}


def _dir_entry(commit: str, path: str) -> dict[str, Any]:
    return {
        "type": "directory",
        "oid": hashlib.sha1(f"{commit}:{path}".encode()).hexdigest(),
        "size": 0,
        "path": path,
    }


def _extra_entry(e: dict[str, Any]) -> dict[str, Any]:
    path, size = str(e["path"]), int(e.get("size", 0))
    entry: dict[str, Any] = {
        "type": e.get("type", "file"),
        "oid": hashlib.sha1(path.encode()).hexdigest(),
        "size": size,
        "path": path,
    }
    if "sha256" in e:
        entry["lfs"] = {"oid": e["sha256"], "size": size, "pointerSize": 134}
    entry.update(e.get("hf", {}))
    return entry
