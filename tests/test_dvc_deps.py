"""dvc.yaml lists, for every stage, exactly the project modules its command imports (directly or not).

A module missing from a stage's deps means an edit to it silently re-runs nothing; a module listed
but not imported re-runs the stage for nothing. Imports anywhere in a module count (also inside
functions). Package `__init__` modules hold no stage logic and are not deps.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO


def module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, seen: set[Path] | None = None) -> set[Path]:
    """`path` and every project module it imports, transitively."""
    seen = set() if seen is None else seen
    if path in seen:
        return seen
    seen.add(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            found = module_file(name)
            if found is not None:
                imported_modules(found, seen)
    return seen


def stages() -> dict[str, dict]:
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in spec.items()}


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_are_exactly_its_imports(name):
    stage = stages()[name]
    match = re.search(r"python -m ([\w.]+)", stage["cmd"])
    assert match, f"{name}: the command does not run a project module"
    entry = module_file(match.group(1))
    assert entry is not None, f"{name}: {match.group(1)} is not a project module"
    imported = {p.relative_to(REPO).as_posix() for p in imported_modules(entry) if p.name != "__init__.py"}
    listed = {d for d in stage["deps"] if isinstance(d, str) and d.endswith(".py")}
    assert not imported - listed, f"{name}: dvc.yaml lacks deps {sorted(imported - listed)}"
    assert not listed - imported, f"{name}: dvc.yaml lists deps it does not import {sorted(listed - imported)}"


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """The walker itself: a module imported only inside a function still counts."""
    found = {p.name for p in imported_modules(REPO / "model" / "train.py")}
    assert {"gpt.py", "store.py", "blocks.py", "tokenizer.py"} <= found
    assert "snapshot.py" not in found
