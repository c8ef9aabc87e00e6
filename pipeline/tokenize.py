"""The `tokenize@<source>` stage: one source's documents -> `data/tokens/<source>/docs.arrow`.

Documents are streamed in batches of about BATCH_CHARS characters to one worker process per core
(at most MAX_PENDING batches in flight, so memory does not grow with the corpus); results come back
in order, so the output is the same whatever the number of workers.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from pipeline.blocks import token_dtype
from pipeline.config import SourceConfig, load_params
from pipeline.docs import DocWriter
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_dir, sha256_dir, sha256_file, write_json
from pipeline.sources import SOURCES_DIR, ReadStats, doc_id, iter_documents
from pipeline.tokenizer import Tokenizer, load_tokenizer
from pipeline.vocab import VOCAB_DIR

TOKENS_DIR = Path("data/tokens")
DOCS_FILE = "docs.arrow"
BATCH_CHARS = 1 << 20
MAX_PENDING_PER_WORKER = 4

_worker_tokenizer: Tokenizer | None = None


def _init_worker(vocab_dir: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(vocab_dir)


def _encode_batch(texts: list[str]) -> list[tuple[str, np.ndarray]]:
    return [(doc_id(text), _worker_tokenizer.encode(text)) for text in texts]


def batched_texts(docs: Iterable[str], batch_chars: int = BATCH_CHARS) -> Iterator[list[str]]:
    """Group non-blank documents into lists of about `batch_chars` characters."""
    batch, size = [], 0
    for text in docs:
        if not text.strip():
            continue
        batch.append(text)
        size += len(text)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def ordered_parallel_map(fn: Callable, items: Iterable, workers: int, initializer, initargs) -> Iterator:
    """`map(fn, items)` over `workers` processes, in order, with a bounded number of items in flight."""
    if workers <= 1:
        initializer(*initargs)
        yield from map(fn, items)
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=initializer, initargs=initargs) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) >= workers * MAX_PENDING_PER_WORKER:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def tokenize_documents(
    docs: Iterable[str], vocab_dir: Path, workers: int
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (doc_id, token ids) for every non-blank document, in input order."""
    batches = batched_texts(docs)
    for results in ordered_parallel_map(_encode_batch, batches, workers, _init_worker, (str(vocab_dir),)):
        yield from results


def tokenize_source(
    name: str, cfg: SourceConfig, vocab_dir: Path, out_dir: Path, workers: int, fingerprint_file: Path | None = None
) -> dict:
    """Tokenize source `name` into `out_dir` (docs.arrow + manifest.json); return the manifest."""
    tokenizer = load_tokenizer(vocab_dir)
    stats = ReadStats()
    docs = iter_documents(cfg, f"sources.{name}", stats)
    with atomic_dir(out_dir) as tmp:
        with DocWriter(tmp / DOCS_FILE, token_dtype(tokenizer.vocab_size)) as writer:
            for identifier, tokens in tokenize_documents(docs, vocab_dir, workers):
                writer.write(identifier, name, tokens)
        if writer.docs == 0:
            raise PipelineError(f"sources.{name}: no documents (the source is empty or blank)")
        manifest = {
            "source": name,
            "tokenizer": tokenizer.name,
            "vocab_size": tokenizer.vocab_size,
            "docs": writer.docs,
            "tokens": writer.tokens,
            "files": stats.files,
            "replaced_chars": stats.replaced_chars,
            "docs_with_replacements": stats.docs_with_replacements,
            "inputs": {
                "vocab": sha256_dir(vocab_dir),
                "source": sha256_file(fingerprint_file) if fingerprint_file else None,
            },
        }
        write_json(tmp / "manifest.json", manifest)
    return manifest


@cli
def main() -> None:
    if len(sys.argv) != 2:
        raise PipelineError("usage: python -m pipeline.tokenize <source name>")
    name = sys.argv[1]
    params = load_params()
    if name not in params.sources:
        raise PipelineError(f"sources.{name}: no such source in params.yaml")
    fingerprint_file = SOURCES_DIR / f"{name}.json"
    if not fingerprint_file.is_file():
        raise PipelineError(f"{fingerprint_file}: not found (run `dvc repro sources` first)")
    manifest = tokenize_source(
        name, params.sources[name], VOCAB_DIR, TOKENS_DIR / name, os.cpu_count() or 1, fingerprint_file
    )
    print(f"tokenize {name}: {manifest['docs']} documents, {manifest['tokens']} tokens")


if __name__ == "__main__":
    main()
