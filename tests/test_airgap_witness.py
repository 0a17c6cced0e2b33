"""The air-gap witness must see what it claims to see: a real process tree under strace in a
loopback-only network namespace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from appliance.image.airgap import non_loopback, parse, strace_prefix

PROBE = """
import os, socket, subprocess, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
socket.create_connection(srv.getsockname()).close()          # loopback: allowed
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try: u.connect(("8.8.8.8", 80))                               # vLLM's get_ip() trick: no packet, still an attempt
except OSError: pass
if os.fork() == 0:                                             # a child process is traced too
    try: socket.create_connection(("10.1.2.3", 443), timeout=1)
    except OSError: pass
    try: socket.create_connection(("::ffff:127.0.0.1", srv.getsockname()[1]), timeout=1).close()
    except OSError: pass
    os._exit(0)
os.wait()
"""


def test_counts_every_non_loopback_attempt_of_a_process_tree(tmp_path: Path) -> None:
    log = tmp_path / "trace.log"
    cmd = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    cmd += [*strace_prefix(log), sys.executable, "-c", PROBE]
    subprocess.run(cmd, check=True, timeout=60)
    text = log.read_text()
    bad = non_loopback(text)
    assert sorted((a.address, a.port) for a in bad) == [("10.1.2.3", 443), ("8.8.8.8", 80)]
    assert len({a.pid for a in bad}) == 2  # parent and forked child
    assert any(a.loopback for a in parse(text))


def test_parses_strace_formats() -> None:
    text = "\n".join(
        [
            '17 connect(5, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("192.168.1.1")}, 16) = 0',
            '18 sendto(5, "x", 1, 0, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), '
            'inet_pton(AF_INET6, "2606:4700::1111", &sin6_addr), sin6_scope_id=0}, 28) = -1 ENETUNREACH',
            '19 connect(6, {sa_family=AF_UNIX, sun_path="/run/appliance/supervisor.sock"}, 110) = 0',
            '20 connect(7, {sa_family=AF_INET, sin_port=htons(8101), sin_addr=inet_addr("127.0.0.1")}, 16'
            " <unfinished ...>",
        ]
    )
    assert [(a.pid, a.address, a.loopback) for a in parse(text)] == [
        (17, "192.168.1.1", False),
        (18, "2606:4700::1111", False),
        (20, "127.0.0.1", True),
    ]
