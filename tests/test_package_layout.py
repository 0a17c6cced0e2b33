"""`appliance/testing/` holds what tests use; no operator feature may depend on it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "appliance"
ALLOWED = {PACKAGE / "cli" / "testing.py"}  # the `appliance testing …` commands


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_only_tests_and_the_testing_commands_import_appliance_testing() -> None:
    offenders = {
        str(path.relative_to(PACKAGE.parent)): sorted(n for n in _imports(path) if n.startswith("appliance.testing"))
        for path in PACKAGE.rglob("*.py")
        if "testing" not in path.relative_to(PACKAGE).parts[:1] and path not in ALLOWED
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_operator_features_live_outside_testing() -> None:
    assert (PACKAGE / "mirror" / "server.py").is_file() and (PACKAGE / "image" / "airgap.py").is_file()
    assert not (PACKAGE / "testing" / "mirror").exists() and not (PACKAGE / "testing" / "airgap.py").exists()
