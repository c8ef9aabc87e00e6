"""The `scan@<source>` stage: what a vocabulary that learns from the data needs from one source.

`tokenizer.name: char` takes its vocabulary from every character of every source. Collecting them
per source, in a stage that depends on that source's path, lets DVC re-run exactly the scan of a
changed source before `vocab` merges the results. Tokenizers with a fixed vocabulary (gpt2 and the
other tiktoken encodings) learn nothing from the data: the scan then writes a stub without reading.

Writes `data/scan/<source>.json`: `{"tokenizer": name, "chars": "..."}` (chars only for `char`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.config import SourceConfig, TokenizerConfig, entry_argument, load_params
from pipeline.errors import cli
from pipeline.io import write_json
from pipeline.parallel import ordered_parallel_map
from pipeline.paths import SCAN_DIR
from pipeline.sources import ReadTask, read_tasks, task_documents


def task_chars(task: ReadTask) -> str:
    """The distinct characters of one task's documents, as a string."""
    docs, _ = task_documents(task)
    return "".join(set().union(*map(set, docs)))


def scan_source(name: str, cfg: SourceConfig, tokenizer: TokenizerConfig, workers: int) -> dict:
    """The scan result of one source for `tokenizer`."""
    if tokenizer.name != "char":
        return {"tokenizer": tokenizer.name}
    seen: set[str] = set()
    for chars in ordered_parallel_map(task_chars, read_tasks(cfg, f"sources.{name}"), workers):
        seen.update(chars)
    return {"tokenizer": tokenizer.name, "chars": "".join(sorted(seen))}


@cli
def main() -> None:
    params = load_params()
    name = entry_argument(sys.argv, params.sources, "sources", "scan")
    result = scan_source(name, params.sources[name], params.tokenizer, os.cpu_count() or 1)
    write_json(Path(SCAN_DIR) / f"{name}.json", result)


if __name__ == "__main__":
    main()
