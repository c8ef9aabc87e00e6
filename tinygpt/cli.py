"""tinygpt: one command for what users run outside `dvc repro`.

    tinygpt --help                 # this list
    tinygpt <command> --help       # a command's usage (prints it and touches nothing)

The pipeline itself runs with `dvc repro` (stages `python -m pipeline.<stage>` and `python -m
model.<stage>`, each with its own `--help`); docs/ holds the guides.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from pipeline.commands import command_parser

# name -> (module with build_parser(prog) and main(argv, prog), what it does)
COMMANDS = {
    "small": ("tinygpt.small", "a complete small run of every stage on your data (about a minute on 2 cores)"),
    "generate": ("model.generate", "continue a prompt, or answer an instruction, with a trained model"),
    "chat": ("model.chat", "chat with a model in the terminal, replies streamed as they are generated"),
    "export": ("model.export", "write a model as a Hugging Face folder transformers loads"),
    "fetch": ("model.fetch", "download a Hugging Face model at a pinned commit into models/"),
    "compare": ("pipeline.compare", "compare DVC experiments per source: seeds grouped, differences with intervals"),
    "replicate": ("pipeline.replicate", "queue seed replicates of the params or of an experiment"),
    "mixsearch": ("pipeline.mixsearch", "search for a data mixture with proxy runs: plan, fit, verify"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__, "tinygpt")
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, (_, summary) in COMMANDS.items():
        command = commands.add_parser(name, help=summary, description=summary, add_help=False)
        command.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv[:1])  # the command; everything after it is the command's own
    module = importlib.import_module(COMMANDS[args.command][0])
    module.main(argv[1:], prog=f"tinygpt {args.command}")


if __name__ == "__main__":
    main()
