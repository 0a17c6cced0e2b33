"""ModelScope hub (or a mirror: MODELSCOPE_ENDPOINT) through the modelscope client.

modelscope >= 1.40 delegates to `modelscope_hub`, whose native API keeps the per-file sha256 that
the legacy compat layer drops; that is the API used here.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from modelscope_hub import HubApi, ProgressCallback, RepoType
from modelscope_hub import errors as ms_errors

from appliance import errors
from appliance.store.sources.base import Downloaded, ModelSource, RemoteFile, check_reachable

HINT = "On an isolated network point MODELSCOPE_ENDPOINT at an internal mirror, or use a dir:/tar: source"


def endpoint() -> str | None:
    return os.environ.get("MODELSCOPE_ENDPOINT") or None


class ModelScopeSource(ModelSource):
    @property
    def repo(self) -> str:
        return self.manifest.source.location

    def describe(self) -> str:
        return f"{self.manifest.source} at {endpoint() or 'the ModelScope hub'}"

    def preflight(self) -> None:
        check_reachable(endpoint() or "https://www.modelscope.cn", self.model, HINT)

    def _api(self) -> HubApi:
        return HubApi(endpoint=endpoint())

    def resolve(self, revision: str | None) -> str:
        # ModelScope's API names no commit for a branch or tag; the lock's per-file sha256 is
        # what pins the content, and a moved tag fails the next fetch loudly.
        with self._translated(revision):
            names = {r.get("name") or r.get("Name") for r in self._api().list_repo_revisions(self.repo, RepoType.MODEL)}
        if revision and names and revision not in names and len(revision) != 40:
            raise errors.RevisionNotFoundError(f"{self.model}: {self.describe()}: revision {revision!r} not found")
        return revision or "master"

    def list_files(self, commit: str) -> list[RemoteFile]:
        with self._translated(commit):
            entries = self._api().list_repo_files(self.repo, RepoType.MODEL, revision=commit, recursive=True)
        # An empty Sha256 means "not published", not a digest to compare with.
        return [RemoteFile(e.path, e.size, sha256=(e.sha256 or "").lower() or None) for e in entries if not e.is_dir]

    def download(self, commit: str, file: RemoteFile, workdir: Path) -> Downloaded:
        check_stop = self.check_stop

        class StopCheck(ProgressCallback):  # called per chunk: Ctrl-C abandons the transfer there
            def update(self, size: int) -> None:
                check_stop()

        with self._translated(commit, file.path):
            path = self._api().downloader.download_file(
                self.repo,
                str(RepoType.MODEL),
                file.path,
                revision=commit,
                local_dir=workdir,
                expected_sha256=file.sha256,
                file_size=file.size,
                progress_callbacks=[StopCheck],
            )
        return Downloaded(Path(path))

    @contextlib.contextmanager
    def _translated(self, revision: str | None, path: str | None = None) -> Iterator[None]:
        where = f"{self.model}: {self.describe()}"
        what = f" file {path!r}" if path else ""
        try:
            yield
        except errors.ApplianceError:
            raise
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise errors.DiskFullError(errno.ENOSPC, f"{where}: disk full while downloading{what}") from exc
            if isinstance(exc, ConnectionError):
                raise errors.HubUnreachableError(f"{where}: hub unreachable{what} ({exc}). {HINT}") from exc
            raise
        except (ms_errors.AuthenticationError, ms_errors.PermissionDeniedError) as exc:
            raise errors.AccessDeniedError(
                f"{where}: access denied (private or gated repo): set MODELSCOPE_API_TOKEN"
            ) from exc
        except ms_errors.NotExistError as exc:
            raise errors.RepoNotFoundError(f"{where}:{what} not found at revision {revision!r} ({_line(exc)})") from exc
        except ms_errors.FileIntegrityError as exc:
            raise errors.IntegrityError(
                self.model, path or "?", f"the client's own check failed: {_line(exc)}"
            ) from exc
        except ms_errors.NetworkError as exc:
            raise errors.HubUnreachableError(f"{where}: hub unreachable{what} ({_line(exc)})") from exc
        except ms_errors.HubError as exc:
            raise errors.SourceError(f"{where}:{what} {_line(exc)}") from exc
        except (ValueError, TypeError, KeyError) as exc:  # the client could not parse what the hub sent
            raise errors.SourceError(f"{where}: malformed answer{what}: {type(exc).__name__}: {_line(exc)}") from exc


def _line(exc: Exception) -> str:
    """The client's message without the request/response dump it appends on further lines."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
