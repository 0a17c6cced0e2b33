"""Count every non-loopback connection attempt of a process tree (the air-gap proof's witness).

A loopback-only network namespace makes outbound connects fail with ENETUNREACH *before* any
packet exists, so a firewall log would see nothing; vLLM's `get_ip()` even does a UDP `connect()`
that sends no packet at all. The honest witness is the syscall: every `connect`/`sendto`/`sendmsg`
with an inet address, by any process of the tree, recorded by `strace -f` (seccomp-bpf keeps the
overhead to the traced calls only).
"""

from __future__ import annotations

import ipaddress
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

TRACED = "connect,sendto,sendmsg"
_INET = re.compile(
    r"^(?:\[pid\s+)?(?P<pid>\d+)\]?\s+(?P<call>connect|sendto|sendmsg)\(.*?"
    r"sa_family=(?P<family>AF_INET6?),\s*sin6?_port=htons\((?P<port>\d+)\),\s*"
    r"(?:sin6_flowinfo=[^,]+,\s*)?"
    r"(?:sin_addr=inet_addr\(\"(?P<v4>[^\"]+)\"\)|inet_pton\(AF_INET6,\s*\"(?P<v6>[^\"]+)\")"
)


@dataclass(frozen=True)
class Attempt:
    pid: int
    call: str
    address: str
    port: int
    line: str

    @property
    def loopback(self) -> bool:
        ip = ipaddress.ip_address(self.address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return ip.is_loopback or ip.is_unspecified


def strace_prefix(log: Path) -> list[str]:
    """Put this in front of a command to record its whole tree's inet syscalls into `log`."""
    strace = shutil.which("strace")
    if strace is None:
        raise FileNotFoundError("strace is not installed (apt-get install strace)")
    return [strace, "-f", "--seccomp-bpf", "-qq", "-e", f"trace={TRACED}", "-e", "signal=none", "-o", str(log), "--"]


def parse(text: str) -> list[Attempt]:
    attempts = []
    for line in text.splitlines():
        match = _INET.search(line)
        if match:
            address = match["v4"] or match["v6"]
            attempts.append(Attempt(int(match["pid"]), match["call"], address, int(match["port"]), line.strip()))
    return attempts


def non_loopback(text: str) -> list[Attempt]:
    return [a for a in parse(text) if not a.loopback]
