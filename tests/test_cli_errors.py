"""Commands as people mistype them: click's usage message and exit 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["bundle", "verify", "/nonexistent/dist"], "does not exist"),
        (["fetch", "--bogus"], "No such option: --bogus"),
        (["image", "save", "--profile"], "requires an argument"),
        (["keys", "new"], "Missing argument"),
        (["nosuchcommand"], "No such command"),
    ],
)
def test_usage_errors_are_one_message(args: list[str], says: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and says in proc.stderr, proc.stderr
