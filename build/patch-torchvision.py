"""Guard torchvision's nms/qnms fake-op registrations so `import torchvision` works on torch+cpu.

PyPI only has CUDA builds of torchvision; against torch+cpu their C ops do not load, and
`torchvision/_meta_registrations.py` then fails at import with
`RuntimeError: operator torchvision::nms does not exist`. The other registrations there are already
guarded by `torchvision.extension._has_ops()`; this applies the same guard to the two that are not.

Run with the interpreter of the venv to patch: `VENV/bin/python build/patch-torchvision.py`.
Idempotent; exits non-zero if the expected lines are not found (a new torchvision needs a new look).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

OPS = ("nms", "qnms")
MARK = "# appliance: CPU torch, no torchvision ops"


def patched_text(text: str, path: Path) -> str:
    for op in OPS:
        old = f'@torch.library.register_fake("torchvision::{op}")\n'
        new = (
            f'@(torch.library.register_fake("torchvision::{op}") if torchvision.extension._has_ops()'
            f" else (lambda fn: fn))  {MARK}\n"
        )
        if new in text:
            continue
        if text.count(old) != 1:
            sys.exit(f"{path}: expected one line {old.strip()!r}; torchvision changed, revisit the fix")
        text = text.replace(old, new)
    return text


def main() -> None:
    spec = importlib.util.find_spec("torchvision")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        sys.exit("torchvision is not installed in this interpreter's environment")
    path = Path(spec.submodule_search_locations[0]) / "_meta_registrations.py"
    text = path.read_text()
    new = patched_text(text, path)
    if new == text:
        print(f"already patched: {path}")
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    tmp.replace(path)
    print(f"patched: {path}")


if __name__ == "__main__":
    main()
