"""Streaming a file (or a byte range of it) to a client, with the body faults applied.

Bytes go from disk to socket with `socket.sendfile` (zero-copy where the kernel allows it), so a
20 GB store is served without ever being held in memory.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from .faults import Faults, hits, lookup
from .repo import MirrorFile

_SINGLE_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


class Unsatisfiable(Exception):
    """The range starts at or after the end of the file: answer 416."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) asked for by a `Range` header, or None to send the whole file (200).

    Multi-range and malformed headers are ignored, as RFC 9110 allows.
    """
    if not header or not (m := _SINGLE_RANGE.match(header)):
        return None
    first, last = m.groups()
    if first == "" and last == "":
        return None
    if first == "":  # suffix range: the last N bytes
        if int(last) == 0:
            raise Unsatisfiable
        return max(0, size - int(last)), size
    start = int(first)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable
    end = size if last == "" else min(int(last) + 1, size)
    return start, end


@dataclass(frozen=True)
class BodyPlan:
    start: int
    end: int  # exclusive: what Content-Length promises
    stop: int  # exclusive: where we really stop sending (< end means a short body, then close)
    flip_at: int | None
    rate: int | None = None  # bytes per second, None: as fast as the socket takes them


def plan_body(
    faults: Faults, repo_id: str, f: MirrorFile, start: int, end: int, take_drop: Callable[[str, str], bool]
) -> BodyPlan:
    stop = end
    if hits(faults.truncate, repo_id, f.path):
        stop = min(stop, max(start, f.size // 2))
    drop = lookup(faults.drop_after, repo_id, f.path)
    # Consume one of the `drop_times` only when this response would really be cut short.
    if drop is not None and start + drop < stop and take_drop(repo_id, f.path):
        stop = start + drop
    flip_at = f.size // 2 if hits(faults.flip_byte, repo_id, f.path) and f.size else None
    return BodyPlan(start, end, stop, flip_at, lookup(faults.throttle, repo_id, f.path))


def send_body(handler: BaseHTTPRequestHandler, f: MirrorFile, plan: BodyPlan) -> None:
    """Write the planned bytes; a short body also closes the connection so the client sees EOF."""
    sock = handler.connection
    with f.source.open("rb") as fh:
        if plan.flip_at is not None and plan.start <= plan.flip_at < plan.stop:
            _sendfile(sock, fh, plan.start, plan.flip_at - plan.start)
            handler.wfile.write(bytes([os.pread(fh.fileno(), 1, plan.flip_at)[0] ^ 0xFF]))
            _sendfile(sock, fh, plan.flip_at + 1, plan.stop - plan.flip_at - 1)
        else:
            _sendfile(sock, fh, plan.start, plan.stop - plan.start, plan.rate)
    if plan.stop < plan.end:
        handler.close_connection = True


def _sendfile(sock, fh, offset: int, count: int, rate: int | None = None) -> None:
    if rate is None:
        if count > 0:
            sock.sendfile(fh, offset, count)
        return
    piece = max(1, rate // 20)
    while count > 0:  # a twentieth of the rate every 50 ms
        n = min(piece, count)
        sock.sendfile(fh, offset, n)
        offset, count = offset + n, count - n
        time.sleep(0.05)
