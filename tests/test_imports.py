"""The project's structure: no import cycle among its modules (imports inside functions count too),
networks that import no loader, and every model-folder file name spelled in one module only."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import REPO, direct_imports

PACKAGES = ("pipeline", "model", "tinygpt")


def project_modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).glob("*.py") if p.name != "__init__.py")


def find_cycle(graph: dict[Path, set[Path]]) -> list[Path] | None:
    """One import cycle of `graph`, as the list of its modules, or None."""
    state: dict[Path, str] = {}
    stack: list[Path] = []

    def visit(node: Path) -> list[Path] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_among_project_modules():
    graph = {path: {f for f in direct_imports(path) if f.name != "__init__.py"} for path in project_modules()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(p.relative_to(REPO).as_posix() for p in cycle)
    assert find_cycle({Path("a"): {Path("b")}, Path("b"): {Path("a")}}) == [Path("a"), Path("b"), Path("a")], "the checker sees cycles"


def test_networks_are_pure_and_loading_lives_in_one_module():
    for network in ("gpt.py", "llama.py", "decoder.py", "layers.py", "lora.py"):
        imported = {p.name for p in direct_imports(REPO / "model" / network)}
        assert not imported & {"folders.py", "train.py", "finetune.py", "export.py"}, (network, imported)
    loaders = [p.relative_to(REPO).as_posix() for p in project_modules() if re.search(r"^def load_any\(", p.read_text(), re.M)]
    assert loaders == ["model/folders.py"]


def test_every_model_folder_file_name_is_spelled_once():
    names = ["model.safetensors", "model_config.json", "config.json", "adapter_config.json", "adapter.safetensors",
             "template.json", "train_manifest.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja",
             "tokenizer.json"]
    for name in names:
        spelled = [p.relative_to(REPO).as_posix() for p in project_modules() if f'"{name}"' in p.read_text()]
        assert len(spelled) == 1, f"{name} is spelled in {spelled}"
