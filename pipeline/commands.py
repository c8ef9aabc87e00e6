"""What every command-line entry point shares: a usage built from the module's docstring, and
`--help` that prints it and touches nothing (it is answered before any params or data are read)."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence


def command_parser(doc: str, prog: str, **kwargs) -> argparse.ArgumentParser:
    """A parser whose description is the docstring's first line and whose epilog is the rest."""
    first, _, rest = (doc or "").strip().partition("\n")
    return argparse.ArgumentParser(prog=prog, description=first, epilog=rest.strip("\n") or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def stage_arguments(doc: str, module: str, argv: Optional[Sequence[str]], entries: Optional[str] = None) -> argparse.Namespace:
    """The arguments of a DVC stage (`python -m <module>`): none, or with `entries` (a params section
    such as `sources`) the one name of an entry it runs for."""
    parser = command_parser(doc, f"python -m {module}")
    if entries is not None:
        parser.add_argument("name", help=f"the entry of `{entries}` in params.yaml to run for")
    return parser.parse_args(argv)
