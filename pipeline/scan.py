"""The `scan@<source>` stage: what a vocabulary learned from the data needs from one source.

Vocabularies that learn from the data see every source; collecting what they need per source, in a
stage that depends on that source's path, lets DVC re-run exactly the scan of a changed source
before `vocab` merges the results. Writes `data/scan/<source>/scan.json` and, for `bpe`,
`sample.jsonl`:
- char: every character of the source's documents;
- bpe: the source's train documents (the split's content-hash rule, so val stays unseen), in
  reading order, up to `tokenizer.sample_bytes` bytes;
- fixed vocabularies (gpt2, other tiktoken encodings) learn nothing: a stub, the source unread.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Optional, Sequence

from pipeline.commands import stage_arguments
from pipeline.config import SourceConfig, SplitConfig, TokenizerConfig, entry, load_params
from pipeline.errors import cli
from pipeline.hashing import content_hashes, is_val, val_threshold
from pipeline.io import atomic_dir, write_json
from pipeline.parallel import Workers, ordered_parallel_map, workers_for
from pipeline.paths import SAMPLE_FILE, SCAN_DIR, SCAN_FILE
from pipeline.sources import ReadTask, read_tasks, task_documents


def task_chars(task: ReadTask) -> str:
    """The distinct characters of one task's documents, as a string."""
    docs, _ = task_documents(task)
    return "".join(set().union(*map(set, docs)))


def task_train_documents(task: ReadTask, threshold: int) -> list[str]:
    """One task's documents that the split puts in train."""
    docs, _ = task_documents(task)
    hashes, _ = content_hashes(docs)
    return [doc for doc, val in zip(docs, is_val(hashes, threshold)) if not val]


def scan_source(name: str, cfg: SourceConfig, tokenizer: TokenizerConfig, split: SplitConfig, out_dir: Path, workers: int | Workers) -> dict:
    """Scan source `name` for `tokenizer` into `out_dir` (replaced whole); return scan.json's content."""
    result: dict = {"tokenizer": tokenizer.name}
    tasks = read_tasks(cfg, f"sources.{name}")
    with atomic_dir(out_dir) as tmp:
        if tokenizer.name == "char":
            seen: set[str] = set()
            for chars in ordered_parallel_map(task_chars, tasks, workers):
                seen.update(chars)
            result["chars"] = "".join(sorted(seen))
        elif tokenizer.name == "bpe":
            result.update(write_sample(tasks, tokenizer.sample_bytes, val_threshold(split.val_fraction), tmp / SAMPLE_FILE, workers))
        write_json(tmp / SCAN_FILE, result)
    return result


def write_sample(tasks, budget: int, threshold: int, path: Path, workers: int | Workers) -> dict:
    """Train documents, in order, until `budget` bytes (the document that crosses it is the last)."""
    docs = nbytes = 0
    batches = ordered_parallel_map(partial(task_train_documents, threshold=threshold), tasks, workers)
    with open(path, "w", encoding="utf-8") as out:
        for batch in batches:
            for doc in batch:
                out.write(json.dumps(doc) + "\n")
                docs, nbytes = docs + 1, nbytes + len(doc.encode("utf-8", "surrogatepass"))
                if nbytes >= budget:
                    break
            if nbytes >= budget:
                batches.close()
                break
    return {"sample_documents": docs, "sample_bytes": nbytes}


@cli
def main(argv: Optional[Sequence[str]] = None) -> None:
    args = stage_arguments(__doc__, "pipeline.scan", argv, entries="sources")
    params = load_params()
    name = entry(args.name, params.sources, "sources")
    result = scan_source(name, params.sources[name], params.tokenizer, params.split, Path(SCAN_DIR) / name, workers_for(params.executor))
    print(f"scan {name}: for {result['tokenizer']}" + (f", {result['sample_documents']} train documents" if "sample_documents" in result else ""))


if __name__ == "__main__":
    main()
