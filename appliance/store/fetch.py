"""Fetch one model into the store: resolve, list, download in parallel, check every byte, swap in.

Layout while fetching (all on the store's filesystem, so every move is an atomic rename):

    store/<model>/                      the verified model — only ever replaced as a whole
    store/.staging/<model>/download/    the source's working area (partial files, resumable)
    store/.staging/<model>/ready/       files that passed their checks
    store/.staging/<model>/old/         the previous version, for the instant of the swap

An interrupted fetch keeps `ready/` and the partial downloads, so the next run re-downloads no
finished file. A file that fails a check is never moved to `ready/`, and `store/<model>` is only
replaced once every file is in `ready/`: nothing good is ever overwritten by something bad.

Ctrl-C abandons the transfers in flight (each stops at its next chunk; the CLI exits without
joining them) and holds off during the swap and the lock write, which happen together or not at all.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub.utils import filter_repo_objects

from appliance import constants
from appliance.errors import (
    AccessDeniedError,
    ApplianceError,
    DiskFullError,
    FetchInterrupted,
    IntegrityError,
    LockError,
    RepoNotFoundError,
    RevisionNotFoundError,
    SourceError,
    UnpinnedRevisionError,
    UnsafePathError,
)
from appliance.manifest import ModelManifest
from appliance.store.hashing import git_blob_sha1, sha256_file
from appliance.store.lock import Lock, LockedFile, disagreements, files_digest, read_lock, write_lock
from appliance.store.paths import check_listing
from appliance.store.sources import ModelSource, RemoteFile, source_for
from appliance.store.verify import walk_files

Progress = Callable[[int, int], None]  # (bytes done, bytes total)
DISK_MARGIN = 64 << 20


@dataclass
class FetchOptions:
    frozen: bool = False  # refuse a missing lock or one that disagrees with the manifest
    allow_unpinned: bool = False  # resolve a branch/tag and pin the result in a new lock
    upgrade: bool = False  # re-resolve even when a matching lock exists
    workers: int = field(default_factory=constants.fetch_workers)
    retries: int = 2  # further attempts after a download fails its checks


@dataclass
class FetchReport:
    model: str
    commit: str
    files: int
    total_bytes: int
    downloaded_bytes: int = 0
    reused_files: int = 0
    lock_written: bool = False
    up_to_date: bool = False


@dataclass(frozen=True)
class Wanted:
    """One file to have, and everything it will be checked against."""

    remote: RemoteFile
    lock_sha256: str | None  # None only while creating a lock

    @property
    def path(self) -> str:
        return self.remote.path


def content_commit(files: list[LockedFile]) -> str:
    """A stable 40-hex id for sources without commits (dir, tar): sha1 of the lock digest."""
    return hashlib.sha1(files_digest(files).encode(), usedforsecurity=False).hexdigest()


_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


def _check_fields(model: str, listing: list[RemoteFile]) -> None:
    """A size or digest a real hub never sends (negative, not a number, not hex) marks a broken or
    hostile listing: refused whole, before any byte is fetched or any sum is taken over it."""
    for f in listing:
        if f.size is not None and (type(f.size) is not int or f.size < 0):
            raise UnsafePathError(model, f.path, f"listed with an invalid size {f.size!r}")
        if f.sha256 is not None and not (isinstance(f.sha256, str) and _HEX64.match(f.sha256)):
            raise UnsafePathError(model, f.path, f"listed with a malformed sha256 {f.sha256!r}")
        if f.git_sha1 is not None and not (isinstance(f.git_sha1, str) and _HEX40.match(f.git_sha1)):
            raise UnsafePathError(model, f.path, f"listed with a malformed git blob id {f.git_sha1!r}")


def _problem(want: Wanted, path: Path, size: int, sha256: str) -> str | None:
    remote = want.remote
    if remote.size is not None and size != remote.size:
        return f"size {size} bytes, expected {remote.size} (short or padded download)"
    if want.lock_sha256 and sha256 != want.lock_sha256:
        return f"sha256 {sha256}, lock says {want.lock_sha256}"
    if remote.sha256 and sha256 != remote.sha256:
        return f"sha256 {sha256}, the hub lists {remote.sha256}"
    if remote.git_sha1 and not want.lock_sha256 and git_blob_sha1(path) != remote.git_sha1:
        return f"git blob id differs from the hub's {remote.git_sha1}"
    return None


class ModelFetch:
    """One model's fetch; `run()` does it. Split into steps so each reads on its own."""

    def __init__(
        self,
        manifest: ModelManifest,
        lock_path: Path,
        store_root: Path,
        options: FetchOptions,
        progress: Progress | None = None,
        source: ModelSource | None = None,
    ) -> None:
        self.manifest = manifest
        self.name = manifest.name
        self.lock_path = lock_path
        self.options = options
        self.progress = progress
        self.source = source or source_for(manifest)
        self.target = store_root / self.name
        self.staging = store_root / ".staging" / self.name
        self.download_dir = self.staging / "download"
        self.ready = self.staging / "ready"
        self._done_bytes = 0
        self._downloaded_bytes = 0
        self._reused = 0
        self._count = threading.Lock()

    # --- plan ------------------------------------------------------------------------------------

    def plan(self) -> tuple[str, list[Wanted], Lock | None]:
        """(commit, files to have, the lock they come from — None when a new lock will be written)."""
        lock = read_lock(self.lock_path)
        reasons = disagreements(self.manifest, lock) if lock else []
        if self.options.frozen:
            if lock is None:
                raise LockError(
                    f"{self.name}: no lock at {self.lock_path}; --frozen never creates one. Run "
                    f"`appliance fetch {self.name}` on a connected build host and commit the lock"
                )
            if reasons:
                raise LockError(
                    f"{self.name}: lock {self.lock_path} disagrees with the manifest: {'; '.join(reasons)}. "
                    "Re-run without --frozen to update the lock"
                )
        if lock is not None and not reasons and not self.options.upgrade:
            return lock.commit, [Wanted(RemoteFile(f.path, f.size), f.sha256) for f in lock.files], lock
        return self._resolve_fresh()

    def _resolve_fresh(self) -> tuple[str, list[Wanted], None]:
        manifest = self.manifest
        if manifest.source.is_hub and not manifest.is_pinned and not self.options.allow_unpinned:
            raise UnpinnedRevisionError(
                f"{self.name}: revision {manifest.revision!r} is a branch or tag, not a commit. Pass "
                "--allow-unpinned to resolve it now and pin the commit in the lock, or set a 40-hex revision"
            )
        self.source.preflight()
        commit = self.source.resolve(manifest.revision)
        listing = self.source.list_files(commit)
        # A hostile entry anywhere in the listing means a broken or compromised mirror: refuse the
        # whole listing, even if the filters below would have dropped that entry.
        check_listing(self.name, [f.path for f in listing])
        _check_fields(self.name, listing)
        chosen = list(
            filter_repo_objects(
                listing,
                allow_patterns=manifest.include or None,
                ignore_patterns=manifest.exclude or None,
                key=lambda f: f.path,
            )
        )
        if not chosen:
            raise SourceError(f"{self.name}: no file of {self.source.describe()} matches include/exclude")
        return commit, [Wanted(f, None) for f in sorted(chosen, key=lambda f: f.path)], None

    # --- run -------------------------------------------------------------------------------------

    def run(self) -> FetchReport:
        try:
            return self._run()
        except FetchInterrupted:
            raise
        except KeyboardInterrupt:
            raise self._interrupted() from None

    def _interrupted(self) -> FetchInterrupted:
        """What an interrupted run leaves for the next one: checked files and partial downloads."""
        counts = []
        for folder in (self.download_dir, self.ready):
            try:
                counts.append(len(walk_files(folder).files) if folder.is_dir() else 0)
            except OSError:
                counts.append(0)
        return FetchInterrupted(self.name, partial=counts[0], ready=counts[1])

    def _run(self) -> FetchReport:
        self._recover_swap()
        commit, wanted, lock = self.plan()
        total = sum(w.remote.size or 0 for w in wanted)
        if lock is not None and self._target_is_current(lock):
            return FetchReport(self.name, commit, len(wanted), total, up_to_date=True)
        self._check_disk(wanted)
        if lock is not None:
            self.source.preflight()
        locked = self._obtain_all(commit, wanted, total)
        if lock is None:
            if commit == "local":
                commit = content_commit(locked)
            lock = Lock.create(self.manifest, commit, locked)
        with _deferred_sigint():  # the swap and the lock that describes it: all or nothing
            self._swap_in()
            written = self._write_lock(lock)
        return FetchReport(self.name, lock.commit, len(wanted), total, self._downloaded_bytes, self._reused, written)

    def _target_is_current(self, lock: Lock) -> bool:
        from appliance.store.verify import verify_deep, verify_fast

        if not self.target.is_dir() or verify_fast(self.target, lock):
            return False
        return not verify_deep(self.target, lock, progress=self._advance_bytes(lock.total_size))

    def _advance_bytes(self, total: int) -> Callable[[int], None] | None:
        if self.progress is None:
            return None
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            self.progress(min(done, total), total)  # type: ignore[misc]

        return advance

    def _check_disk(self, wanted: list[Wanted]) -> None:
        self.staging.mkdir(parents=True, exist_ok=True)
        present = walk_files(self.ready).files if self.ready.is_dir() else {}
        need = sum(w.remote.size or 0 for w in wanted if w.path not in present)
        free = shutil.disk_usage(self.staging).free
        if need + DISK_MARGIN > free:
            raise DiskFullError(
                errno.ENOSPC,
                f"{self.name}: needs {need / 1e9:.2f} GB free in {self.staging.parent.parent}, "
                f"only {free / 1e9:.2f} GB available",
            )

    def _obtain_all(self, commit: str, wanted: list[Wanted], total: int) -> list[LockedFile]:
        self.ready.mkdir(parents=True, exist_ok=True)
        self.download_dir.mkdir(parents=True, exist_ok=True)
        stop = threading.Event()
        poller = threading.Thread(target=self._poll_progress, args=(stop, total), daemon=True)
        poller.start()
        results: list[LockedFile] = []
        failures: list[ApplianceError] = []
        pool = ThreadPoolExecutor(self.options.workers, thread_name_prefix=f"fetch-{self.name}")
        try:
            futures = [pool.submit(self._obtain, commit, want) for want in wanted]
            pending = set(futures)
            while pending:
                # A timeout, so a Ctrl-C that the kernel handed to a worker thread still reaches the
                # main thread's handler within half a second.
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    if future.cancelled():
                        continue
                    try:
                        results.append(future.result())
                    except IntegrityError as exc:  # one bad file: finish the others, report all
                        failures.append(exc)
                    except ApplianceError as exc:  # unreachable, denied, disk full: stop now
                        failures.append(exc)
                        _cancel(futures)
        except BaseException:
            # Ctrl-C: abandon in-flight transfers (they stop at their next chunk, partial files kept
            # for resume) instead of waiting for each to finish, and start none of the queued ones.
            self.source.stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        else:
            pool.shutdown(wait=True)
        finally:
            stop.set()
            poller.join()
        if failures:
            fatal = [f for f in failures if not isinstance(f, IntegrityError)]
            if len(failures) == 1 or fatal:  # disk full, denied, unreachable: the one cause that matters
                raise (fatal or failures)[0]
            listing = "\n".join(f"  {e}" for e in failures)
            raise SourceError(f"{self.name}: {len(failures)} files failed:\n{listing}")
        if self.progress:
            self.progress(total, total)
        return results

    def _poll_progress(self, stop: threading.Event, total: int) -> None:
        # Sources report nothing while a file streams in; the bytes on disk are the truth.
        while not stop.wait(0.5):
            if self.progress:
                try:
                    files = walk_files(self.download_dir).files
                    partial = sum(st.st_size for st in files.values())
                except OSError:
                    partial = 0
                self.progress(min(self._done_bytes + partial, total), total)

    def _finished(self, size: int, downloaded: bool) -> None:
        with self._count:
            self._done_bytes += size
            if downloaded:
                self._downloaded_bytes += size
            else:
                self._reused += 1

    def _obtain(self, commit: str, want: Wanted) -> LockedFile:
        self.source.check_stop()
        final = self.ready / want.path
        # 1. finished and checked by an interrupted run
        if final.is_file():
            found = self._accept(want, final, final, downloaded=False)
            if isinstance(found, LockedFile):
                return found
            final.unlink()
        # 2. unchanged in the current store (a re-lock or an update of some files)
        current = self.target / want.path
        expected_sha = want.lock_sha256 or want.remote.sha256
        if expected_sha and current.is_file() and current.stat().st_size == want.remote.size:
            final.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(current, final)
            found = self._accept(want, final, final, downloaded=False)
            if isinstance(found, LockedFile):
                return found
            final.unlink()
        # 3. download, check, retry (a dropped connection or bad bytes may be transient)
        problem = ""
        for _attempt in range(self.options.retries + 1):
            try:
                got = self.source.download(commit, want.remote, self.download_dir)
            except (DiskFullError, AccessDeniedError, RevisionNotFoundError, RepoNotFoundError, UnsafePathError):
                raise  # retrying cannot help
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise DiskFullError(errno.ENOSPC, f"{self.name}: disk full while writing {want.path}") from exc
                problem = f"download failed: {exc}"
                continue
            except IntegrityError as exc:  # a hub client's own check: its problem, not a second "m: path:"
                problem = exc.problem
                continue
            except Exception as exc:
                problem = f"download failed: {exc}"
                continue
            self.source.check_stop()  # interrupted meanwhile: the main thread has moved on
            found = self._accept(want, got.path, final, downloaded=True, sha256=got.sha256)
            if isinstance(found, LockedFile):
                return found
            problem = found
            self.source.discard(self.download_dir, want.remote)
        attempts = self.options.retries + 1
        raise IntegrityError(self.name, want.path, f"{problem} ({attempts} attempts from {self.source.describe()})")

    def _accept(
        self, want: Wanted, path: Path, final: Path, downloaded: bool, sha256: str | None = None
    ) -> LockedFile | str:
        """Check `path` (hashing it unless the source hashed it while writing) and move it to `final`;
        the problem found otherwise."""
        size = path.stat().st_size
        sha = sha256 or sha256_file(path)
        problem = _problem(want, path, size, sha)
        if problem:
            return problem
        if path != final:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, final)
        os.chmod(final, 0o644)
        self._finished(size, downloaded)
        return LockedFile(path=want.path, size=size, sha256=sha)

    def _recover_swap(self) -> None:
        """A run killed between the swap's two renames left the model only in `old/`: put it back."""
        old = self.staging / "old"
        if old.is_dir() and not self.target.exists():
            os.rename(old, self.target)

    def _swap_in(self) -> None:
        old = self.staging / "old"
        if old.exists():
            shutil.rmtree(old)
        for dirpath, _dirs, _files in os.walk(self.ready):
            os.chmod(dirpath, 0o755)
        if self.target.exists():
            os.rename(self.target, old)
        os.rename(self.ready, self.target)
        shutil.rmtree(self.staging, ignore_errors=True)
        with contextlib.suppress(OSError):  # the shared .staging folder, once no fetch uses it
            self.staging.parent.rmdir()

    def _write_lock(self, lock: Lock) -> bool:
        if read_lock(self.lock_path) == lock:
            return False
        write_lock(self.lock_path, lock)
        return True


def _cancel(futures: list[Future[LockedFile]]) -> None:
    for future in futures:
        future.cancel()


@contextlib.contextmanager
def _deferred_sigint() -> Iterator[None]:
    """Hold Ctrl-C until the block is done, then raise it. A handler swap, not a signal mask: a mask
    is per thread, and the kernel hands a process-wide SIGINT to any thread not masking it."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) in (
        signal.SIG_IGN,
        None,
    ):
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def fetch_model(
    manifest: ModelManifest,
    lock_path: Path,
    store_root: Path,
    options: FetchOptions | None = None,
    progress: Progress | None = None,
) -> FetchReport:
    return ModelFetch(manifest, lock_path, store_root, options or FetchOptions(), progress).run()
