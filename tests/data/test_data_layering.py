"""Layering: ``metaloop.data`` imports nothing from metaloop but ``metaloop.tasks`` (and the
leaf ``metaloop.validate``, which imports nothing from metaloop)."""

from __future__ import annotations

import ast
from pathlib import Path

import metaloop.data

ALLOWED = ("metaloop.data", "metaloop.tasks", "metaloop.validate")


def metaloop_imports(package_dir: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in package_dir.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = {node.module}
            elif isinstance(node, ast.Import):
                names = {a.name for a in node.names}
            else:
                continue
            found.setdefault(path.name, set()).update(n for n in names if n.startswith("metaloop"))
    return found


def test_data_imports_only_tasks() -> None:
    imports = metaloop_imports(Path(metaloop.data.__file__).parent)
    assert "episodes.py" in imports and "metaloop.tasks.base" in imports["episodes.py"]
    bad = {f: sorted(n for n in names if not n.startswith(ALLOWED)) for f, names in imports.items()}
    assert not any(bad.values()), bad
