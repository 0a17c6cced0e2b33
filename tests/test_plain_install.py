"""`pip install .` without extras: every command's help works, every module outside `testing/`
imports, and a command that needs an extra names it in one line. Checked in a child interpreter
where the extras' modules cannot be imported (as if not installed)."""

from __future__ import annotations

import json
import subprocess
import sys

from appliance.cli import EXTRA_OF
from tests.conftest import REPO

CHILD = r"""
import contextlib, importlib, io, json, pkgutil, sys

BLOCKED = set(sys.argv[1].split(","))

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Blocker())
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]

import appliance, typer
from appliance.cli import app, main

failed_imports = {}
for info in pkgutil.walk_packages(appliance.__path__, "appliance."):
    if info.name.startswith("appliance.testing") or info.name == "appliance.__main__":
        continue
    try:
        importlib.import_module(info.name)
    except Exception as exc:
        failed_imports[info.name] = repr(exc)

def run(args):
    err = io.StringIO()
    sys.argv = ["appliance", *args]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()

helps = {}
def walk(command, path):
    helps[" ".join(path) or "appliance"] = run([*path, "--help"])
    for name, sub in getattr(command, "commands", {}).items():
        walk(sub, [*path, name])

walk(typer.main.get_command(app), [])
needs_extra = run(["testing", "make-tiny", sys.argv[2]])
print(json.dumps({"imports": failed_imports, "helps": helps, "make_tiny": needs_extra}))
"""


def test_plain_install_cli(tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocked = ",".join(sorted(EXTRA_OF))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, blocked, str(tmp_path / "tiny")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["imports"] == {}
    assert len(result["helps"]) > 20  # every group and command
    assert {path: code for path, (code, _) in result["helps"].items() if code != 0} == {}
    code, stderr = result["make_tiny"]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "pip install 'ocr-appliance[testing]'" in lines[0], stderr
