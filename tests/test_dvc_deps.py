"""dvc.yaml lists, for every stage, exactly the project modules its command imports (directly or not).

A module missing from a stage's deps means an edit to it silently re-runs nothing; a module listed
but not imported re-runs the stage for nothing. Imports anywhere in a module count (also inside
functions). Package `__init__` modules hold no stage logic and are not deps.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, direct_imports, module_file


def imported_modules(path: Path, seen: set[Path] | None = None) -> set[Path]:
    """`path` and every project module it imports, transitively."""
    seen = set() if seen is None else seen
    if path in seen:
        return seen
    seen.add(path)
    for found in direct_imports(path):
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


# Every params field that names a file or folder, and the stages that read it (each must list it as
# `${section.field}`, or `${item.path}` for a source's path).
PATH_PARAMS = {
    "sources.*.path": ("scan", "tokenize"),
    "tokenizer.path": ("vocab",),
    "train.init_from": ("train",),
    "finetune.init_from": ("finetune",),
    "finetune.data": ("finetune",),
    "finetune.vocab": ("finetune",),
}
PATH_FIELDS = {"path", "init_from", "data", "vocab"}


def test_the_tracked_path_params_are_the_ones_load_params_requires():
    """dvc.yaml can interpolate only keys written in params.yaml, which load_params requires for
    exactly TRACKED_PATHS: a path param a stage reads must be among them (sources' paths are
    written per source anyway)."""
    from pipeline.config import TRACKED_PATHS

    assert set(PATH_PARAMS) - {"sources.*.path"} == set(TRACKED_PATHS)


def path_fields(cls, prefix: str) -> set[str]:
    """The path-like fields of a params dataclass, recursively (`sources` entries as `sources.*`)."""
    import dataclasses
    import typing

    found = set()
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        inner = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        if dataclasses.is_dataclass(hint) or inner:
            name = f"{prefix}{f.name}.*" if typing.get_origin(hint) is dict else f"{prefix}{f.name}"
            found |= path_fields(hint if dataclasses.is_dataclass(hint) else inner[0], name + ".")
        elif f.name in PATH_FIELDS:
            found.add(prefix + f.name)
    return found


def test_every_path_param_is_a_dep_of_the_stages_that_read_it():
    from pipeline.config import Params

    assert path_fields(Params, "") - {"snapshots.*.path"} == set(PATH_PARAMS), "a new path param needs its stages here"
    for param, names in PATH_PARAMS.items():
        placeholder = "${item.path}" if param.startswith("sources.") else "${" + param + "}"
        for name in names:
            assert placeholder in stages()[name]["deps"], f"{name}: dvc.yaml lacks the dep {placeholder}"


def test_editing_lora_code_does_not_rerun_pretraining():
    """Train loads init_from folders (adapter folders too) through model/folders.py, which merges
    adapters itself: LoRA training code is a dep of finetune only."""
    assert "model/lora.py" not in stages()["train"]["deps"] and "model/lora.py" in stages()["finetune"]["deps"]
