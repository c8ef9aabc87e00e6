"""The `tokenize@<source>` stage: one source's documents -> its token store `data/tokens/<source>/`.

The main process only plans read tasks (`pipeline.sources.read_tasks`) and appends results. Each
worker process reads a task itself, tokenizes and hashes its documents, and sends back one batch:
the tokens of all its documents back to back, their lengths and their content hashes. A bounded
number of tasks is in flight (`pipeline.parallel`), so memory does not grow with the corpus, and
results are written in task order, so the store is the same whatever the number of workers.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np

from pipeline.commands import stage_arguments
from pipeline.config import SourceConfig, entry, load_params
from pipeline.errors import PipelineError, cli
from pipeline.hashing import content_hashes
from pipeline.io import atomic_dir, sha256_dir, write_json
from pipeline.parallel import Workers, ordered_parallel_map, workers_for
from pipeline.paths import MANIFEST_FILE, TOKENS_DIR, VOCAB_DIR
from pipeline.sources import ReadStats, ReadTask, read_tasks, task_documents
from pipeline.store import StoreWriter, token_dtype
from pipeline.tokenizer import Tokenizer, load_tokenizer, tokenizer_info, with_bos

_worker_tokenizer: Tokenizer | None = None


class Batch(NamedTuple):
    """A task's documents, tokenized: what a worker sends back."""

    tokens: np.ndarray  # all documents' tokens back to back
    lengths: np.ndarray  # (docs,) int64
    hashes: np.ndarray  # (docs, 16) uint8
    text_bytes: int  # UTF-8 bytes of the documents
    stats: ReadStats


def _init_worker(vocab_dir: str) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one worker per core: no thread pool inside (HF tokenizers)
    _worker_tokenizer = load_tokenizer(vocab_dir)


def encode_task(task: ReadTask) -> Batch:
    """Read, tokenize and hash one task's documents (runs in a worker)."""
    docs, stats = task_documents(task)
    tokens, lengths = with_bos(_worker_tokenizer, *_worker_tokenizer.encode_batch(docs))
    hashes, text_bytes = content_hashes(docs)
    return Batch(tokens=tokens, lengths=lengths, hashes=hashes, text_bytes=text_bytes, stats=stats)


def tokenize_source(name: str, cfg: SourceConfig, vocab_dir: Path, out_dir: Path, workers: int | Workers) -> dict:
    """Tokenize source `name` into the store `out_dir`; return its manifest."""
    info = tokenizer_info(vocab_dir)
    stats, text_bytes = ReadStats(), 0
    tasks = read_tasks(cfg, f"sources.{name}")
    with atomic_dir(out_dir) as tmp:
        writer = StoreWriter(tmp, token_dtype(info["vocab_size"]))
        for batch in ordered_parallel_map(encode_task, tasks, workers, _init_worker, (str(vocab_dir),)):
            writer.append(batch.tokens, batch.lengths, batch.hashes)
            stats.add(batch.stats)
            text_bytes += batch.text_bytes
        layout = writer.close()
        if layout["docs"] == 0:
            raise PipelineError(f"sources.{name}: no documents (the source is empty or blank)")
        manifest = {
            "source": name,
            **info,
            **layout,
            "text_bytes": text_bytes,
            **asdict(stats),
            "inputs": {"vocab": sha256_dir(vocab_dir), "settings": {k: v for k, v in asdict(cfg).items() if v is not None}},
        }
        write_json(tmp / MANIFEST_FILE, manifest)
    return manifest


@cli
def main(argv: Optional[Sequence[str]] = None) -> None:
    args = stage_arguments(__doc__, "pipeline.tokenize", argv, entries="sources")
    params = load_params()
    name = entry(args.name, params.sources, "sources")
    manifest = tokenize_source(name, params.sources[name], VOCAB_DIR, TOKENS_DIR / name, workers_for(params.executor))
    print(f"tokenize {name}: {manifest['docs']} documents, {manifest['tokens']} tokens, {manifest['text_bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
