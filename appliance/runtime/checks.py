"""What every `appliance doctor` check shares: its result type and how host commands are run
(injected, so tests feed recorded answers)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

Status = Literal["pass", "warn", "fail"]
Runner = Callable[[Sequence[str], float], "subprocess.CompletedProcess[str]"]
COMMAND_TIMEOUT = 30.0


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


def run_command(args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
