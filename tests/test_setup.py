"""The README's two commands do all set-up, and CI runs exactly them (so a green CI proves the README)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.conftest import REPO

SCRIPT = REPO / "build" / "system-deps.sh"


def readme_commands() -> list[str]:
    """The commands of the README's first shell block (comments dropped)."""
    block = re.search(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block is not None, "README.md has no ```sh block"
    lines = (line.split("#", 1)[0].strip() for line in block.group(1).splitlines())
    return [line for line in lines if line]


def ci_commands() -> list[str]:
    """What .ci/run runs besides its clean-up: every line calling make."""
    lines = (line.split("#", 1)[0].strip() for line in (REPO / ".ci" / "run").read_text().splitlines())
    return [line for line in lines if re.match(r"(\S+=\S+\s+)*make\b", line)]


def test_ci_runs_exactly_the_readme_commands() -> None:
    assert readme_commands() == ["make offline-image", "make test"]
    assert ci_commands() == readme_commands()
    ci = (REPO / ".ci" / "run").read_text()
    assert "apt-get" not in ci and "pip " not in ci, ".ci/run must not set up anything the README's commands do not"


def test_both_commands_start_with_the_system_tools() -> None:
    """`make -n` shows what runs: build/system-deps.sh comes first for both README commands."""
    # Under `make test` the parent make's MAKELEVEL/MAKEFLAGS would make this one a sub-make that
    # prints "Entering directory" lines: run it as the README's user types it, from a shell.
    env = {k: v for k, v in os.environ.items() if k not in {"MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES"}}
    for target in ("offline-image", "test"):
        plan = subprocess.run(
            ["make", "-n", "-W", "pyproject.toml", target],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        assert plan and plan[0] == "bash build/system-deps.sh", (target, plan[:3])


def _shim(tmp_path: Path, missing: set[str]) -> dict[str, str]:
    """A PATH whose dpkg-query reports `missing` as not installed (everything else as installed)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    query = bin_dir / "dpkg-query"
    cases = " ".join(sorted(missing))
    query.write_text(
        "#!/bin/bash\n"
        f'for m in {cases}; do [[ ${{@: -1}} == "$m" ]] && {{ echo -n "unknown ok not-installed"; exit 0; }}; done\n'
        'echo -n "install ok installed"\n'
    )
    query.chmod(0o755)
    return os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_non_root_is_told_in_one_line_what_to_install() -> None:
    with tempfile.TemporaryDirectory(prefix="system-deps-") as tmp:  # pytest's tmp_path is root-only
        os.chmod(tmp, 0o755)
        _run_as_nobody(Path(tmp))


def _run_as_nobody(tmp_path: Path) -> None:
    env = _shim(tmp_path, {"docker.io", "umoci"})
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to run as non-root"
    proc = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "bash", str(SCRIPT)],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "umoci docker.io" in proc.stderr and "apt-get install -y umoci docker.io" in proc.stderr


def test_nothing_to_do_when_everything_is_installed(tmp_path: Path) -> None:
    """Also as root: no apt-get runs (the shim PATH has an apt-get that fails loudly)."""
    env = _shim(tmp_path, set())
    apt = tmp_path / "bin" / "apt-get"
    apt.write_text("#!/bin/sh\necho apt-get must not run >&2; exit 9\n")
    apt.chmod(0o755)
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    every = set(re.search(r"PACKAGES=\((.*?)\)", SCRIPT.read_text(), re.S).group(1).split())  # type: ignore[union-attr]
    assert {"buildah", "podman", "skopeo", "debootstrap", "umoci", "runc", "tini", "strace", "docker.io"} <= every
