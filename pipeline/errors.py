"""Errors a user can fix, and the wrapper that turns them into a one-line message and exit 1."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable


class PipelineError(Exception):
    """Bad input or params: reported as one line naming the file or key at fault."""


class ConfigError(PipelineError):
    """A params.yaml key is unknown, missing or has a bad value."""


def cli(main: Callable[..., None]) -> Callable[..., None]:
    """Run a command's `main()`, printing `error: ...` and exiting 1 on a PipelineError, and on a
    missing file (under data/ or metrics/: a stage run before the stage that writes its input)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except PipelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
        except FileNotFoundError as exc:
            missing = str(exc.filename or exc)
            made_by_stages = Path(missing).parts[:1] in (("data",), ("metrics",))  # what `dvc repro` writes
            hint = " (run the stages before this one first: `dvc repro`)" if made_by_stages else ""
            print(f"error: {missing}: not found{hint}", file=sys.stderr)
            sys.exit(1)

    return wrapper
