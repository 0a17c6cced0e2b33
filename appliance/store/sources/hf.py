"""Hugging Face hub (or any mirror speaking its protocol: HF_ENDPOINT) through huggingface_hub."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_url
from huggingface_hub import errors as hf_errors
from huggingface_hub.file_download import http_get
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers

from appliance import errors
from appliance.store.sources.base import Downloaded, ModelSource, RemoteFile, check_reachable

HINT = "On an isolated network point HF_ENDPOINT at an internal mirror, or use a dir:/tar: source"


def endpoint() -> str:
    # Read at call time: huggingface_hub reads HF_ENDPOINT once, at import.
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


class HFSource(ModelSource):
    @property
    def repo(self) -> str:
        return self.manifest.source.location

    def describe(self) -> str:
        return f"{self.manifest.source} at {endpoint()}"

    def preflight(self) -> None:
        check_reachable(endpoint(), self.model, HINT)

    def _api(self) -> HfApi:
        return HfApi(endpoint=endpoint())

    def resolve(self, revision: str | None) -> str:
        with self._errors(revision):
            sha = self._api().model_info(self.repo, revision=revision).sha
        if not sha:
            raise errors.SourceError(f"{self.model}: {self.describe()} did not say which commit {revision!r} is")
        return sha

    def list_files(self, commit: str) -> list[RemoteFile]:
        with self._errors(commit):
            entries = list(self._api().list_repo_tree(self.repo, revision=commit, recursive=True))
        return [
            RemoteFile(
                path=e.path,
                size=e.size,
                sha256=e.lfs.sha256 if e.lfs else None,
                git_sha1=None if e.lfs else e.blob_id,
            )
            for e in entries
            if isinstance(e, RepoFile)
        ]

    def download(self, commit: str, file: RemoteFile, workdir: Path) -> Downloaded:
        """huggingface_hub's own HEAD + `http_get` (Range resume, retries), writing through a hasher.

        `hf_hub_download` would give the same bytes but no digest, and re-reading a multi-GB file
        to hash it puts a second pass on the critical path; this hashes while the bytes arrive.
        A partial file survives an interrupted run, and the next run resumes it with a Range request.
        """
        url = hf_hub_url(self.repo, file.path, revision=commit, endpoint=endpoint())
        with self._errors(commit, file.path):
            meta = get_hf_file_metadata(url, endpoint=endpoint(), retry_on_errors=True)
            if meta.commit_hash and meta.commit_hash != commit:
                raise errors.SourceError(
                    f"{self.model}: {file.path}: served from commit {meta.commit_hash}, not {commit}"
                )
            partial = self._partial(workdir, file)
            partial.parent.mkdir(parents=True, exist_ok=True)
            resume = partial.stat().st_size if partial.exists() else 0
            if meta.size is not None and resume > meta.size:
                partial.unlink()
                resume = 0
            digest = hashlib.sha256()
            if resume:
                with open(partial, "rb") as done:
                    while chunk := done.read(1 << 20):
                        digest.update(chunk)
            with open(partial, "ab") as handle:
                sink = _HashingSink(handle, digest, self.check_stop)
                http_get(meta.location, sink, resume_size=resume, headers=build_hf_headers(), expected_size=meta.size)
        target = workdir / file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, target)
        return Downloaded(target, None if sink.rewound else digest.hexdigest())

    @staticmethod
    def _partial(workdir: Path, file: RemoteFile) -> Path:
        return workdir / ".partial" / f"{file.path}.incomplete"

    def discard(self, workdir: Path, file: RemoteFile) -> None:
        super().discard(workdir, file)
        self._partial(workdir, file).unlink(missing_ok=True)

    @contextlib.contextmanager
    def _errors(self, revision: str | None, path: str | None = None) -> Iterator[None]:
        """Translate huggingface_hub / httpx failures into errors that tell the operator what to do."""
        try:
            yield
        except errors.ApplianceError:
            raise
        except Exception as exc:
            translated = _translate(exc, f"{self.model}: {self.describe()}", revision, path)
            if translated is None:
                raise
            raise translated from exc


def _translate(exc: Exception, where: str, revision: str | None, path: str | None) -> Exception | None:
    what = f" file {path!r}" if path else ""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return errors.DiskFullError(errno.ENOSPC, f"{where}: disk full while downloading{what}")
    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return errors.HubUnreachableError(
            f"{where}: HF_HUB_OFFLINE is set; fetching needs the hub or a mirror (unset it on the build host)"
        )
    status = exc.response.status_code if isinstance(exc, hf_errors.HfHubHTTPError) and exc.response else None
    if isinstance(exc, hf_errors.GatedRepoError) or (
        status in (401, 403) and not isinstance(exc, hf_errors.RepositoryNotFoundError)
    ):
        return errors.AccessDeniedError(
            f"{where}: access denied (gated or private repo): accept its licence on the hub and set HF_TOKEN"
        )
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return errors.RevisionNotFoundError(f"{where}: revision {revision!r} not found")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return errors.RepoNotFoundError(f"{where}: repository not found (or private: set HF_TOKEN)")
    if isinstance(exc, hf_errors.RemoteEntryNotFoundError):
        return errors.SourceError(f"{where}:{what} not found at {revision}")
    if isinstance(exc, httpx2.TransportError) and not isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout):
        return errors.SourceError(f"{where}: transfer of{what} broke off ({exc})")
    if isinstance(exc, hf_errors.LocalEntryNotFoundError | httpx2.TransportError | ConnectionError):
        return errors.HubUnreachableError(f"{where}: hub unreachable{what} ({_root_cause(exc)}). {HINT}")
    if isinstance(exc, hf_errors.HfHubHTTPError):
        return errors.SourceError(f"{where}:{what} {exc}")
    if isinstance(exc, ValueError | TypeError | KeyError):  # the client could not parse what the hub sent
        return errors.SourceError(f"{where}: malformed answer{what}: {type(exc).__name__}: {exc}")
    return None


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return f"{type(exc).__name__}: {exc}"


class _HashingSink:
    """The file object `http_get` writes to: appends hash as they land. `http_get` rewinds only
    when a server ignores a Range request; the digest is then void and the fetcher re-hashes."""

    def __init__(self, handle, digest, check_stop=lambda: None) -> None:  # type: ignore[no-untyped-def]
        self.handle, self.digest, self.rewound, self.check_stop = handle, digest, False, check_stop

    def write(self, data: bytes) -> int:
        self.check_stop()  # Ctrl-C: abandon the transfer between pieces, keeping what was written
        self.digest.update(data)
        return self.handle.write(data)

    def tell(self) -> int:
        return self.handle.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        self.rewound = True
        return self.handle.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        self.rewound = True
        return self.handle.truncate(size)
