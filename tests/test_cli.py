"""Every entry point answers `--help` with its usage, exits 0 and touches nothing: the `tinygpt`
command and each of its commands, every `python -m` module of the project (the DVC stages too)
and every benchmark script. Run in an empty folder, so reading params or data would fail loudly
and writing anything would show."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO
from tinygpt.cli import COMMANDS

RUNNER = r"""
import contextlib, io, json, runpy, sys, warnings
warnings.simplefilter("ignore", RuntimeWarning)  # runpy: a module the ones before it imported
results = {}
for target in json.loads(sys.argv[1]):
    sys.argv = [target, "--help"]
    out = io.StringIO()
    code = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            if target.endswith(".py"):
                runpy.run_path(target, run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code
    results[target] = [code, out.getvalue()]
print(json.dumps(results))
"""


def entry_points() -> list[str]:
    """Modules of the project and scripts of bench/ that run something when executed."""
    modules = [f"{p.parent.name}.{p.stem}" for package in ("pipeline", "model", "tinygpt")
               for p in sorted((REPO / package).glob("*.py")) if 'if __name__ == "__main__"' in p.read_text()]
    scripts = [str(p) for p in sorted((REPO / "bench").glob("*.py")) if 'if __name__ == "__main__"' in p.read_text()]
    return modules + scripts


def test_every_entry_point_answers_help_and_touches_nothing(tmp_path):
    targets = entry_points()
    assert {"pipeline.tokenize", "pipeline.mix", "model.train", "model.evaluate", "model.chat", "tinygpt.cli"} <= set(targets)
    done = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(targets)], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for target, (code, output) in results.items():
        assert code in (0, None) and output.lstrip().startswith("usage:"), f"{target}: exit {code}\n{output[-800:]}"
    assert [p.name for p in tmp_path.iterdir()] == [], "--help wrote files"


def test_the_tinygpt_command_lists_every_command_and_each_answers_help(tmp_path):
    listed = subprocess.run(["tinygpt", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert listed.returncode == 0 and all(name in listed.stdout for name in COMMANDS)
    for name in COMMANDS:
        done = subprocess.run(["tinygpt", name, "--help"], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.startswith(f"usage: tinygpt {name}"), (name, done.stderr)
    bad = subprocess.run(["tinygpt", "train"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'train'" in bad.stderr
    assert [p.name for p in Path(tmp_path).iterdir()] == []
