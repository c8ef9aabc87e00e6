"""Queue seed replicates of the current params or of an experiment, as ordinary DVC experiments.

    python -m pipeline.replicate --seeds 3                  # the workspace's params at 3 seeds
    python -m pipeline.replicate --seeds 3 --exp code-heavy # an experiment's params at 3 seeds
    python -m pipeline.replicate --seeds 5 -S mix.weights.code=0.5 --name code-half
    dvc exp run --run-all                                   # runs the queue; then python -m pipeline.compare

A replicate changes only the top-level `seed`: model init, the order of train blocks and the mix's
document sample all follow it. The document sample is part of what two mixtures differ in, so its
noise belongs in the interval of a mixture comparison; tokenize, dedup and split do not read the seed
and are not re-run, and mix and pack only rewrite indices (seconds). Replicate seeds are
`seed, seed + 1, ...` from the params' seed, so the replicates of two settings pair up by seed
(`pipeline.compare` pairs them); seeds that already have a run of the setting are not queued again.
Replicates are named `<name>-s<seed>` (`--name`, default: the experiment's name or the branch).
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import Optional, Sequence

import yaml

from pipeline.compare import dvc_experiments, experiment_names, parse_runs
from pipeline.commands import command_parser
from pipeline.config import PARAMS_FILE
from pipeline.errors import PipelineError, cli


def flatten(params: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def overrides(workspace: dict, target: dict) -> dict:
    """The `-S key=value` changes that turn the workspace's params into `target`'s (seed aside)."""
    have, want = flatten(workspace), flatten(target)
    missing = sorted(set(have) - set(want) - {"seed"})
    if missing:
        raise PipelineError(f"params.yaml has {missing[0]}, which the experiment lacks; replicate it from its own commit")
    return {key: value for key, value in want.items() if key != "seed" and have.get(key, object()) != value}


def plan(workspace: dict, changes: dict, seeds: int, existing: set[int], name: str) -> list[tuple[str, dict]]:
    """(experiment name, -S changes) for each of the `seeds` replicate seeds without a run yet."""
    first = int(workspace["seed"])
    return [(f"{name}-s{seed}", {**changes, "seed": seed}) for seed in range(first, first + seeds) if seed not in existing]


def _without_seed(flat: dict) -> dict:
    return {k: v for k, v in flat.items() if k != "seed"}


def override_value(value, key: str) -> str:
    """A params value as `dvc exp run -S` (Hydra's override grammar) reads it back unchanged."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(override_value(v, key) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v, key)}" for k, v in value.items()) + "}"
    if "\n" in value or "\\" in value:
        raise PipelineError(f"{key}: a value with a line break or backslash cannot go through dvc exp run -S; set it in params.yaml")
    return "'" + value.replace("'", "\\'") + "'"


def exp_command(name: str, changes: dict, queue: bool = True, present: Optional[set[str]] = None) -> list[str]:
    """`dvc exp run [--queue] -n NAME -S key=value ...`; a key params.yaml lacks (not in `present`, the
    flattened keys it has) is added with Hydra's `+key=value`, which dvc's -S grammar needs for new keys."""
    command = ["dvc", "exp", "run"] + (["--queue"] if queue else []) + ["-n", name]
    for key, value in changes.items():
        flag = "+" if present is not None and key not in present else ""
        command += ["-S", f"{flag}{key}={override_value(value, key)}"]
    return command


def params_keys(path: str | Path = PARAMS_FILE) -> set[str]:
    """The flattened keys of a params file (`mix.weights.code`, ...); none when it is missing."""
    path = Path(path)
    return set(flatten(yaml.safe_load(path.read_text()) or {})) if path.is_file() else set()


def _branch() -> str:
    result = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() != "HEAD" else "baseline"


def parse_change(text: str) -> tuple[str, object]:
    """`-S key=value` as (key, value), the value read as YAML (as DVC's -S reads it)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise PipelineError(f"-S {text}: expected key=value")
    return key, yaml.safe_load(value)


def build_parser(prog: str = "python -m pipeline.replicate") -> argparse.ArgumentParser:
    parser = command_parser(__doc__, prog)
    parser.add_argument("--seeds", type=int, default=3, help="replicates the setting should have in all (default 3)")
    parser.add_argument("--exp", help="replicate this experiment's params (default: the workspace's params.yaml)")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="a params change, as dvc exp run -S")
    parser.add_argument("--name", help="experiment name prefix (default: --exp, or the git branch)")
    return parser


@cli
def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m pipeline.replicate") -> None:
    args = build_parser(prog).parse_args(argv)
    if args.seeds < 1:
        raise PipelineError("--seeds: must be at least 1")
    if not Path(PARAMS_FILE).is_file():
        raise PipelineError(f"{PARAMS_FILE}: file not found (run from the project's root)")
    workspace = yaml.safe_load(Path(PARAMS_FILE).read_text())
    if not isinstance(workspace, dict) or not isinstance(workspace.get("seed"), int):
        raise PipelineError(f"{PARAMS_FILE}: seed: replicates need an integer top-level seed")
    rows = dvc_experiments()
    runs = parse_runs(rows)
    named = experiment_names(rows)
    target = workspace
    if args.exp:
        found = [r for r in runs if r.name == args.exp]
        if not found:
            raise PipelineError(f"--exp: no experiment named '{args.exp}' with metrics (dvc exp show lists them)")
        target = found[0].params
    changes = overrides(workspace, target)
    changes.update(dict(parse_change(s) for s in args.set))
    if "seed" in changes:
        raise PipelineError("-S seed: replicates choose the seeds themselves (--seeds N: seed, seed + 1, ...)")
    setting = _without_seed(flatten(workspace) | changes)
    existing = {r.seed for r in runs if _without_seed(flatten(r.params)) == setting}
    planned = plan(workspace, changes, args.seeds, existing, args.name or args.exp or _branch())
    waiting = [name for name, _ in planned if name in named]
    queued = [(name, change) for name, change in planned if name not in named]
    for name in waiting:
        print(f"{name} is already queued or run")
    present = set(flatten(workspace))
    for name, change in queued:
        result = subprocess.run(exp_command(name, change, present=present), capture_output=True, text=True)
        if result.returncode != 0:
            raise PipelineError(f"dvc exp run --queue -n {name}: {(result.stderr.strip().splitlines() or ['failed'])[-1]}")
        print(f"queued {name}")
    have = args.seeds - len(planned)
    print(f"{len(queued)} replicates queued ({have} of {args.seeds} seeds already run); "
          "run them with `dvc exp run --run-all`, then `python -m pipeline.compare`")


if __name__ == "__main__":
    main()
