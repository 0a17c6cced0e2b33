"""A store holding a good model `m` and its lock, and the appliance CLI run in-process against it.

`Scene.refused(...)` is the contract every hostile case must meet: a non-zero exit, exactly one
`error:` line matching what the case expects (it names the file and the problem), no traceback,
and not one byte changed anywhere under the test's folder — the good store and its lock included,
and nothing written outside the store (only `store/.staging`, the fetcher's resumable work area,
may change).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import stat
import sys
from pathlib import Path

from tests.conftest import ManifestDir, make_files

GOOD = {
    "config.json": b'{"model_type": "tiny"}\n',
    "tokenizer.json": b'{"version": "1.0"}\n' * 20,
    "weights/model.safetensors": bytes(range(256)) * 64,
}
BODY = """
engine: paddleocr-vl
source: {source}
revision: {revision}
serve: {{served_model_name: X}}
resources: {{weight_bytes: 1}}
"""


def tree(root: Path, skip: tuple[Path, ...]) -> dict[str, tuple[str, str]]:
    """Every entry under root: (kind, sha256 of the bytes | link target | '')."""
    entries: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) not in skip]
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                entries[str(path)] = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                entries[str(path)] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                entries[str(path)] = ("dir" if stat.S_ISDIR(st.st_mode) else "special", "")
    return entries


def cli(*args: str) -> tuple[int, str]:
    """`appliance ARGS` through the real entry point, in this process: (exit status, stderr)."""
    from appliance.cli import main

    err = io.StringIO()
    saved = sys.argv
    sys.argv = ["appliance", *args]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = int(exc.code or 0)
    finally:
        sys.argv = saved
    return code, err.getvalue()


class Scene:
    def __init__(self, root: Path, manifests: ManifestDir) -> None:
        self.root = root
        self.manifests = manifests
        self.store = root / "store"
        self.lock = manifests.root / "locks" / "m.lock.json"
        self.good = make_files(root / "good", GOOD)
        self.use(f"dir:{self.good}")
        code, err = self.run("fetch", "m")
        assert code == 0, err

    def use(self, source: str, revision: str = "null") -> None:
        self.manifests.model("m", BODY.format(source=source, revision=revision))

    def run(self, *args: str) -> tuple[int, str]:
        return cli(*args, "--manifests", str(self.manifests.root), "--store", str(self.store))

    def snapshot(self) -> dict[str, tuple[str, str]]:
        return tree(self.root, skip=(self.store / ".staging",))

    def refused(self, *args: str, match: str) -> str:
        """Run a command that must be refused; returns its one error line."""
        before = self.snapshot()
        code, err = self.run(*args)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code != 0 and "Traceback" not in err and len(errors) == 1, err
        assert re.search(match, errors[0]), errors[0]
        assert self.snapshot() == before  # good store, lock, sources: untouched; nothing new outside the store
        return errors[0]
