"""The dedup stage's speed and memory on existing token stores, and its quality on a planted corpus.

    python bench/dedup_bench.py speed --tokens DIR --vocab DIR
    python bench/dedup_bench.py quality

`speed`: every store under `--tokens` (one folder per source, as `tokenize` writes them, in sorted
name order) deduplicated by the stage itself with the default `dedup` params, once exact only (near
disabled) and once exact + near, one worker per core. Reports wall time (process start to exit),
the text size the stores stand for (their tokens' UTF-8 bytes), MB/s, documents removed, and the
peak RssAnon (heap; memory-mapped store pages are not counted) of the stage and of its workers.
`quality`: recall of planted near-duplicate pairs (a header line added and 5/10/20% of words
replaced) and false positives among unrelated pairs, for the default settings and for FineWeb's
(word 5-grams, 14 bands x 8 rows), measured against the S-curve each setting predicts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from harness import timed  # noqa: E402
from pipeline.config import NearDedupConfig  # noqa: E402
from pipeline.dedup import Corpus, cluster_texts  # noqa: E402
from pipeline.store import TokenStore  # noqa: E402
from pipeline.tokenizer import load_tokenizer  # noqa: E402
from tests.helpers import planted_corpus, shingle_jaccard  # noqa: E402


def text_bytes(corpus: Corpus, vocab: Path) -> int:
    """UTF-8 bytes the stores' tokens stand for."""
    sizes = load_tokenizer(vocab).token_bytes()
    total = 0
    for store in corpus.stores:
        for at in range(0, int(store.offsets[-1]), 1 << 24):
            total += int(sizes[store.take(np.arange(at, min(at + (1 << 24), int(store.offsets[-1]))))].sum())
    return total


def speed(tokens: Path, vocab: Path) -> None:
    """The real stage (`python -m pipeline.dedup`) in a scratch project whose data/tokens and
    data/vocab link to the given folders; wall time and peak RssAnon of the stage and its workers."""
    names = sorted(p.name for p in tokens.iterdir() if p.is_dir())
    corpus = Corpus(names, [TokenStore(tokens / n) for n in names])
    mb = text_bytes(corpus, vocab) / 1e6
    print(f"{len(corpus)} documents, {int(corpus.lengths.sum())} tokens, {mb:.0f} MB of text, {os.cpu_count()} cores\n")
    print("| run | wall s | MB/s | exact removed | near removed | peak RssAnon main MB | peak RssAnon worker MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, dedup_params in (("exact only", {"near": {"enabled": False}}), ("exact + near (defaults)", {})):
        with tempfile.TemporaryDirectory() as scratch:
            project = Path(scratch)
            (project / "data").mkdir()
            (project / "data/tokens").symlink_to(tokens.resolve())
            (project / "data/vocab").symlink_to(vocab.resolve())
            params = {"seed": 0, "sources": {n: {"format": "text", "path": n} for n in names}, "tokenizer": {"name": "gpt2"},
                      "split": {}, "mix": {"weights": {names[0]: 1.0}}, "pack": {"context_length": 8}, "dedup": dedup_params}
            (project / "params.yaml").write_text(yaml.safe_dump(params))
            run = timed([sys.executable, "-m", "pipeline.dedup"], project, env={"PYTHONPATH": str(ROOT)})
            metrics = json.loads((project / "metrics/dedup.json").read_text())["sources"]
        exact = sum(m["exact_removed_docs"] for m in metrics.values())
        near = sum(m["near_removed_docs"] for m in metrics.values())
        main_mb = max(run.peak_mb.values(), default=0)
        worker_mb = max(run.worker_peak_mb.values(), default=0)
        print(f"| {label} | {run.wall:.1f} | {mb / run.wall:.1f} | {exact} | {near} | {main_mb:.0f} | {worker_mb:.0f} |")


def quality() -> None:
    settings = {"default (3-grams, 36 x 4)": NearDedupConfig(), "FineWeb (5-grams, 14 x 8)": NearDedupConfig(ngram=5, num_perm=112, bands=14, rows=8)}
    print("| setting | changed | mean Jaccard | recall | S-curve predicts |")
    print("|---|---:|---:|---:|---:|")
    for name, cfg in settings.items():
        for change in (0.05, 0.10, 0.20):
            texts, pairs = planted_corpus(n_unrelated=150, n_planted=100, change=change)
            roots = cluster_texts(texts, cfg)
            js = [shingle_jaccard(texts[a], texts[b], cfg.ngram) for a, b in pairs]
            predicted = np.mean([1 - (1 - j**cfg.rows) ** cfg.bands for j in js])
            found = np.mean([roots[a] == roots[b] for a, b in pairs])
            print(f"| {name} | {change:.0%} | {np.mean(js):.2f} | {found:.2f} | {predicted:.2f} |")
    texts, _ = planted_corpus(n_unrelated=400, n_planted=0, change=0.0, seed=3)
    pairs = len(texts) * (len(texts) - 1) // 2
    for name, cfg in settings.items():
        roots = cluster_texts(texts, cfg)
        together = sum(roots[a] == roots[b] for a, b in itertools.combinations(range(len(texts)), 2))
        print(f"\n{name}: unrelated pairs clustered: {together} of {pairs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    run = sub.add_parser("speed")
    run.add_argument("--tokens", type=Path, required=True)
    run.add_argument("--vocab", type=Path, required=True)
    sub.add_parser("quality")
    args = parser.parse_args()
    speed(args.tokens, args.vocab) if args.part == "speed" else quality()


if __name__ == "__main__":
    main()
