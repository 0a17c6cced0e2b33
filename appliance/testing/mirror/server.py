"""The HTTP server: one port, both hub protocols, routed by URL prefix."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from . import hf, modelscope
from .faults import Faults
from .repo import MirrorFile, MirrorRepo, git_blob_sha1_of_file
from .transfer import Unsatisfiable, parse_range, plan_body, send_body

log = logging.getLogger(__name__)


class RequestRecord(NamedTuple):
    method: str
    path: str  # as sent, query string included
    range: str | None  # the Range header, if any


class HubMirror:
    """Local hub speaking the Hugging Face and ModelScope download protocols over one port.

    `requests` lists every request received, in arrival order, so tests can assert on resumes.
    With `cdn_host` set (e.g. "localhost", a different origin from 127.0.0.1), LFS files are
    answered with a 302 to `/cdn-lfs/…` on that host, as the real hubs redirect to their CDN.
    """

    def __init__(
        self,
        repos: Iterable[MirrorRepo],
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        cdn_host: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.faults = faults if faults is not None else Faults()
        self.cdn_host = cdn_host
        self.requests: list[RequestRecord] = []
        self._repos: dict[str, MirrorRepo] = {}
        self._files: dict[str, dict[str, MirrorFile]] = {}
        self._lock = threading.Lock()
        self._drops: Counter[tuple[str, str]] = Counter()
        self._blob_ids: dict[tuple[Path, int], str] = {}
        self._server: _Server | None = None
        self._bound_port: int | None = None
        self._thread: threading.Thread | None = None
        for repo in repos:
            self.add_repo(repo)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """`http://host:port`; stays valid after stop() (a stopped mirror refuses connections)."""
        if self._bound_port is None:
            raise RuntimeError("mirror not started")
        return f"http://{self.host}:{self._bound_port}"

    @property
    def cdn_url(self) -> str:
        return f"http://{self.cdn_host or self.host}:{self._bound_port}"

    def start(self) -> HubMirror:
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.port), _Handler)
        self._server.mirror = self
        self._bound_port = self._server.server_address[1]
        # A short poll interval makes stop() (which waits for the serve loop to notice) quick.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="hub-mirror", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()  # keep-alive sockets would otherwise outlive the mirror
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HubMirror:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def client_env(self, home: Path) -> dict[str, str]:
        """Environment pointing both clients (in a child process) at this mirror, caches under `home`."""
        return {
            "HF_ENDPOINT": self.url,
            "HF_HOME": str(home / "hf"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_XET": "1",
            "MODELSCOPE_ENDPOINT": self.url,
            "MODELSCOPE_CACHE": str(home / "modelscope" / "cache"),
            "MODELSCOPE_HOME": str(home / "modelscope" / "home"),
        }

    # -- state used by the protocol handlers ------------------------------------------------
    def add_repo(self, repo: MirrorRepo) -> None:
        with self._lock:
            self._repos[repo.repo_id] = repo
            self._files[repo.repo_id] = {f.path: f for f in repo.files}

    def repo(self, repo_id: str) -> MirrorRepo | None:
        return self._repos.get(repo_id)

    def file(self, repo_id: str, path: str) -> MirrorFile | None:
        return self._files.get(repo_id, {}).get(path)

    def known_repo_ids(self) -> list[str]:
        return list(self._repos)

    def resolve(self, repo: MirrorRepo, revision: str) -> str | None:
        """Commit for a branch/tag name or the full commit id itself."""
        if revision in repo.branches:
            return repo.branches[revision]
        return repo.commit if revision.lower() == repo.commit else None

    def blob_id(self, f: MirrorFile) -> str:
        """git blob sha1 of a (small, non-LFS) file, computed once."""
        key = (f.source, f.size)
        if (oid := self._blob_ids.get(key)) is None:
            oid = git_blob_sha1_of_file(f.source, f.size)
            with self._lock:
                self._blob_ids[key] = oid
        return oid

    def take_drop(self, repo_id: str, path: str) -> bool:
        with self._lock:
            if self._drops[(repo_id, path)] >= self.faults.drop_times:
                return False
            self._drops[(repo_id, path)] += 1
            return True

    def record(self, method: str, path: str, range_header: str | None) -> None:
        with self._lock:
            self.requests.append(RequestRecord(method, path, range_header))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # snapshot downloads open several connections at once
    mirror: HubMirror

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        with self._open_lock:
            self._open.add(sock)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up (a download client closing its pool, a resumed range) is normal for a
        hub: one quiet line at most, never socketserver's traceback on stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
            return
        print(f"mirror: {client_address[0]}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    def close_connections(self) -> None:
        with self._open_lock:
            for sock in self._open:
                with contextlib.suppress(OSError):  # already closed by the client
                    sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients' connection pools expect
    timeout = 120  # an idle keep-alive connection frees its thread eventually
    server: _Server

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _dispatch(self, method: str) -> None:
        mirror = self.server.mirror
        mirror.record(method, self.path, self.headers.get("Range"))
        self.method = method
        # Always drain a request body, or the next request on this keep-alive connection is garbage.
        self.body = self.read_body() if method == "POST" else b""
        url = urlsplit(self.path)
        # Split before unquoting: a revision like "refs/pr/1" arrives as one %2F-quoted segment.
        segments = [unquote(s) for s in url.path.split("/")[1:]]
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            if segments[:2] == ["api", "v1"]:
                modelscope.handle(self, mirror, segments[2:], query)
            elif segments[:1] == ["cdn-lfs"]:
                self.serve_cdn(mirror, segments[1:], query)
            else:
                hf.handle(self, mirror, segments, query)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away mid-body; nothing to answer

    # -- responses --------------------------------------------------------------------------
    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.method != "HEAD":
            self.wfile.write(data)

    def send_redirect(self, location: str, headers: Mapping[str, str]) -> None:
        self.send_response(302)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def send_file(self, mirror: HubMirror, repo_id: str, f: MirrorFile, headers: Mapping[str, str]) -> None:
        """200 or 206 with the file bytes (body faults applied), 416 past the end."""
        try:
            rng = parse_range(self.headers.get("Range"), f.size)
        except Unsatisfiable:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{f.size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end = rng or (0, f.size)
        self.send_response(206 if rng else 200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{f.size}")
        self.end_headers()
        if self.method == "HEAD":
            return
        send_body(self, f, plan_body(mirror.faults, repo_id, f, start, end, mirror.take_drop))

    def serve_cdn(self, mirror: HubMirror, segments: list[str], query: dict[str, str]) -> None:
        """`/cdn-lfs/{sha256}?repo=…&path=…`: where LFS redirects land (a "signed URL")."""
        repo_id, path = query.get("repo", ""), query.get("path", "")
        f = mirror.file(repo_id, path)
        if f is None or segments != [f.sha256]:
            self.send_json(404, {"error": "Not Found"})
            return
        self.send_file(mirror, repo_id, f, {"ETag": f'"{f.sha256}"'})
