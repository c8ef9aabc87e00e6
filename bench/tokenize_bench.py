"""The tokenize stage through DVC against raw tiktoken, on documents of realistic sizes.

    python bench/tokenize_bench.py [--shapes jsonl paragraphs files] [--mb 100 500] [--repeat 2]

For each input shape and size, a fresh copy of the project with one source `bench`:
- `jsonl`: `bench/corpus.py`'s code JSONL, documents of 0.3-12 KB (median ~3 KB);
- `paragraphs`: the standard library's `.py` files read with `document: paragraph` (a few hundred
  bytes each: the small-document case where per-document costs show);
- `files`: the same files read with `document: file` (~16 KB documents).
Then, timed from outside (wall clock):
- stage, first: `dvc repro -s tokenize@bench` right after `vocab`, DVC hashing the raw input once;
- stage: `dvc repro -f -s tokenize@bench` (DVC's hash cache warm), everything else included:
  DVC, process start, reading, parsing, hashing, writing the store and DVC committing it;
- stage without DVC: `python -m pipeline.tokenize bench`, to show what DVC adds;
- raw: the stage's own documents, already in memory, in chunks of ~1 MB, `encode_ordinary` in a
  `multiprocessing.Pool` of as many processes (one per core); only encoding is timed, workers
  return token counts (nothing is pickled back). The most favourable baseline there is.
The three alternate `--repeat` times; the best wall time of each is reported, and CPU seconds
(user + sys of every process involved; raw: of the encoding calls) of that run, which other load
on the machine disturbs less than wall time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from corpus import build_files, build_jsonl  # noqa: E402
from harness import make_repo, timed  # noqa: E402
from machine import load  # noqa: E402

CHUNK_BYTES = 1 << 20
_encoding = None


def source_params(shape: str, corpus: Path) -> dict:
    if shape == "jsonl":
        return {"format": "jsonl", "path": str(corpus / "code.jsonl")}
    return {"format": "text", "path": str(corpus), "document": "paragraph" if shape == "paragraphs" else "file"}


def build(shape: str, corpus: Path, mb: float) -> None:
    if corpus.exists():
        return
    if shape == "jsonl":
        build_jsonl(corpus, 2 * mb)  # two halves; the bench reads code.jsonl
        (corpus / "prose.jsonl").unlink()
    else:
        build_files(corpus, mb)


def _init(vocab_dir: str) -> None:
    global _encoding
    from pipeline.tokenizer import load_tokenizer

    _encoding = load_tokenizer(vocab_dir)._encoding


def _encode(texts: list[str]) -> tuple[int, float]:
    start = time.process_time()
    tokens = sum(len(_encoding.encode_ordinary(t)) for t in texts)
    return tokens, time.process_time() - start


def _ready(_: int) -> None:
    time.sleep(0.2)  # every worker takes one, so all are initialised before the clock starts


def raw_run(chunks: list[list[str]], vocab_dir: Path, workers: int) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and tokens of encoding every chunk in a warm pool."""
    with multiprocessing.get_context("fork").Pool(workers, _init, (str(vocab_dir),)) as pool:
        pool.map(_ready, range(workers), chunksize=1)
        start = time.perf_counter()
        results = list(pool.imap(_encode, chunks))
        return time.perf_counter() - start, sum(c for _, c in results), sum(n for n, _ in results)


def command_run(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds (the command and all it waited for) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def chunked(docs, limit: int = CHUNK_BYTES) -> list[list[str]]:
    chunks, chunk, size = [], [], 0
    for text in docs:
        chunk.append(text)
        size += len(text)
        if size >= limit:
            chunks.append(chunk)
            chunk, size = [], 0
    return chunks + ([chunk] if chunk else [])


def bench(shape: str, mb: float, work: Path, repeat: int, workers: int) -> dict:
    import yaml

    from pipeline.config import SourceConfig
    from pipeline.sources import iter_documents

    corpus = work / f"{shape}-{mb:g}"
    build(shape, corpus, mb)
    source = source_params(shape, corpus)
    params = yaml.safe_load((Path(__file__).resolve().parent.parent / "params.yaml").read_text())
    params.update(sources={"bench": source}, snapshots={}, tokenizer={"name": "gpt2"}, mix={"train_tokens": 1000, "weights": {"bench": 1}})
    repo = make_repo(work / f"repo-{shape}-{mb:g}", params)
    timed(["dvc", "repro", "vocab"], repo)
    first = timed(["dvc", "repro", "-s", "tokenize@bench"], repo)
    manifest = json.loads((repo / "data/tokens/bench/manifest.json").read_text())
    chunks = chunked(iter_documents(SourceConfig(**source), "sources.bench"))
    best = {"stage": (float("inf"), 0.0), "direct": (float("inf"), 0.0), "raw": (float("inf"), 0.0)}
    for _ in range(repeat):
        runs = {
            "stage": command_run(["dvc", "repro", "-f", "-s", "tokenize@bench"], repo),
            "direct": command_run([sys.executable, "-m", "pipeline.tokenize", "bench"], repo),
        }
        wall, cpu, raw_tokens = raw_run(chunks, repo / "data/vocab", workers)
        runs["raw"] = (wall, cpu)
        best = {k: min(best[k], runs[k]) for k in best}
    assert raw_tokens == manifest["tokens"], (raw_tokens, manifest["tokens"])
    return {"shape": shape, "mb": manifest["text_bytes"] / 1e6, "docs": manifest["docs"], "tokens": manifest["tokens"],
            "stage_first_s": first.wall, **{f"{k}_s": v[0] for k, v in best.items()}, **{f"{k}_cpu": v[1] for k, v in best.items()},
            "load": load()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["jsonl", "paragraphs", "files"])
    p.add_argument("--mb", type=float, nargs="+", default=[100, 500])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--work", type=Path, default=Path("/tmp/tinygpt-tokenize-bench"))
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print("| shape | text MB | documents | mean doc KB | raw tiktoken MB/s | stage MB/s (DVC incl.) | **stage / raw** (wall) "
          "| stage / raw (CPU) | stage s | without DVC s | first run s | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for shape in args.shapes:
        for mb in args.mb:
            r = bench(shape, mb, args.work, args.repeat, args.workers)
            print(f"| {r['shape']} | {r['mb']:.0f} | {r['docs']:,} | {r['mb'] * 1e3 / r['docs']:.2f} | {r['mb'] / r['raw_s']:.1f} | "
                  f"{r['mb'] / r['stage_s']:.1f} | **{r['raw_s'] / r['stage_s']:.2f}x** | {r['raw_cpu'] / r['stage_cpu']:.2f}x | "
                  f"{r['stage_s']:.1f} | {r['direct_s']:.1f} | {r['stage_first_s']:.1f} | {r['load']} |", flush=True)


if __name__ == "__main__":
    main()
