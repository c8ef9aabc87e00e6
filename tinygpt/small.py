"""A complete small run of every stage, about a minute on 2 CPU cores: a DVC experiment named
`small` with the params below changed, on the data, tokenizer and model folder params.yaml names.

    tinygpt small                          # dvc exp run -n small -S ... (every stage)
    tinygpt small -S train.max_iters=30    # more changes on top
    tinygpt small --dry-run                # print the dvc command and run nothing

Run again, it names the next experiment small-2, small-3, ... (DVC refuses a name it already has;
--dry-run does not look, and prints the default name).

Why an experiment: the run is an ordinary DVC experiment of the current commit (`dvc exp show`
lists it with its params and metrics), so it is exactly as reproducible as `dvc repro` and the
profile lives in the run's record, not in a file of its own. Like any `dvc exp run`, it leaves the
experiment's params and outputs in the workspace: commit your own params edits first, and
`git restore params.yaml` drops the profile again.
The profile shrinks the work, not the pipeline: the tokenizer learns from less text, and a small
model trains for a few steps on a short context. With your own `sources`, or `train.init_from` and
`tokenizer.path` pointing at a Hugging Face folder, the same command runs all stages on them (a
model of 100M+ parameters takes longer than a minute even for these few steps).
"""

from __future__ import annotations

import argparse
import copy
import subprocess
from pathlib import Path
from typing import Optional, Sequence

import yaml

from pipeline.commands import command_parser
from pipeline.config import PARAMS_FILE, Params
from pipeline.errors import PipelineError, cli
from pipeline.compare import dvc_experiments, experiment_names
from pipeline.replicate import exp_command, flatten, parse_change
from pipeline.typed import from_dict

NAME = "small"
PROFILE = {
    "tokenizer.sample_bytes": 2_000_000,  # a BPE learns from 2 MB of each source
    "mix.train_tokens": 120_000,  # enough for the steps below
    "pack.context_length": 128,
    "model.preset": "cpu-small",  # 4 layers, 128 wide (ignored when train.init_from names a model)
    "train.max_iters": 60,
    "train.warmup_iters": 6,
    "train.batch_size": 8,
    "train.eval_interval": 0,  # evaluate once, at the end
    "train.checkpoint_interval": 0,
    "evaluate.max_blocks": 32,  # val blocks per source
    "sample.max_new_tokens": 60,
    "finetune.epochs": 1,
    "wandb.mode": "disabled",
}


def with_changes(params: dict, changes: dict) -> dict:
    """A copy of the params with each dotted key of `changes` set (missing sections created)."""
    out = copy.deepcopy(params)
    for key, value in changes.items():
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def small_command(params: dict, extra: dict, name: str) -> list[str]:
    """`dvc exp run -n <name> -S ...` for the profile and `extra`, checked as params.yaml would be."""
    changes = {**PROFILE, **extra}
    from_dict(Params, with_changes(params, changes), "")
    present = set(flatten(params))
    return exp_command(name, changes, queue=False, present=present)


def free_name(base: str, taken: set[str]) -> str:
    """`base`, or `base-2`, `base-3`, ... : the first name no experiment of this commit has yet."""
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def build_parser(prog: str = "python -m tinygpt.small") -> argparse.ArgumentParser:
    profile = "\n".join(f"    {key}: {value}" for key, value in PROFILE.items())
    parser = command_parser(f"{__doc__}\nThe profile:\n{profile}\n", prog)
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="a further params change")
    parser.add_argument("-n", "--name", help=f"the experiment's name (default {NAME}, or {NAME}-2, ... if taken)")
    parser.add_argument("--dry-run", action="store_true", help="print the dvc command, run nothing")
    return parser


@cli
def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m tinygpt.small") -> None:
    args = build_parser(prog).parse_args(argv)
    if not Path(PARAMS_FILE).is_file():
        raise PipelineError(f"{PARAMS_FILE}: file not found (run from the project's root)")
    params = yaml.safe_load(Path(PARAMS_FILE).read_text())
    changes = dict(parse_change(pair) for pair in args.set)
    try:
        command = small_command(params, changes, args.name or NAME)  # checked before DVC is asked anything
    except PipelineError as exc:
        raise PipelineError(f"small profile: {exc}") from None
    name = args.name or NAME
    if not args.name and not args.dry_run:
        name = free_name(NAME, experiment_names(dvc_experiments()))
        command = small_command(params, changes, name)
    print(" ".join(command), flush=True)
    if not args.dry_run and subprocess.run(command).returncode != 0:
        raise PipelineError(f"dvc exp run -n {name} failed (its output is above)")


if __name__ == "__main__":
    main()
