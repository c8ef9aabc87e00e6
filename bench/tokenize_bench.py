"""Benchmark of the tokenize stage against raw tiktoken (issue #1).

    python bench/tokenize_bench.py [--sizes-mb 10 100] [--workers N] [--repeat 2] [--profile]

For each size it builds a corpus (the Python standard library's .py files, as read by
`format: python-stdlib`, copied over and over into a folder until the size is reached), then:

- raw: the same texts, already in memory, in chunks of ~1 Mi characters, encoded with tiktoken's
  `encode_ordinary` in a `multiprocessing` Pool of `--workers` processes (each builds its own
  Encoding from the vocab folder); only the encoding is timed, workers return token counts only.
- stage: `pipeline.tokenize.tokenize_source` (format text, one document per file) in a fresh
  subprocess; wall-clock of that call, peak RSS of its main process, of the largest worker
  (getrusage RUSAGE_CHILDREN), and of the whole process tree (psutil, RSS summed every 50 ms).
- `--repeat` runs (default 2) per size, stage and raw interleaved; the best time of each is
  reported (the machine may be shared), memory columns are the largest seen.
- CPU seconds (user+sys, main process and workers) of each side, timed over the same span as the
  wall clock: stage/raw (CPU) = raw CPU / stage CPU, a throughput ratio less sensitive than wall
  clock to other load on the machine (on saturated cores, wall throughput follows CPU per MB).

MB = 10**6 bytes of UTF-8 source text. Prints a markdown table; writes only into a temp dir.
`--profile` also prints a cProfile of the stage's main process for the largest size.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHUNK_CHARS = 1 << 20  # raw: characters per task sent to a worker (the stage batches ~the same)
SAMPLE_S = 0.05

_encoding = None


# ---------------------------------------------------------------- corpus and vocab

def build_corpus(folder: Path, size_mb: float) -> tuple[int, int]:
    """Copy the stdlib .py files into `folder` until it holds `size_mb` MB; return (bytes, files)."""
    from pipeline.config import SourceConfig
    from pipeline.sources import source_files

    root, files = source_files(SourceConfig(format="python-stdlib"), "bench")
    target = int(size_mb * 1e6)
    total = count = rep = 0
    while total < target:
        for i, path in enumerate(files):
            data = path.read_bytes()
            if not data.strip():
                continue  # the stage skips blank documents; keep both sides on the same text
            if total + len(data) > target:
                data = data[: target - total]
                data = data[: len(data.decode("utf-8", "ignore").encode("utf-8"))]  # whole characters
                if not data.strip():
                    return total, count
            out = folder / f"r{rep:03d}" / f"{i:05d}.py"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
            total += len(data)
            count += 1
            if total >= target:
                break
        rep += 1
    return total, count


def get_vocab(vocab_dir: Path) -> None:
    from pipeline.config import TokenizerConfig
    from pipeline.vocab import build_vocab

    build_vocab(TokenizerConfig(name="gpt2"), {}, vocab_dir)


# ---------------------------------------------------------------- raw tiktoken

def _raw_init(vocab_dir: str) -> None:
    global _encoding
    from pipeline.tokenizer import load_tokenizer

    _encoding = load_tokenizer(vocab_dir)._encoding  # the bare tiktoken.Encoding


def _raw_ready(_: int) -> int:
    time.sleep(0.2)  # hold the worker so that every worker gets one of these (all initialized)
    return os.getpid()


def _raw_encode(texts: list[str]) -> tuple[int, float]:
    start = time.process_time()
    tokens = sum(len(_encoding.encode_ordinary(t)) for t in texts)
    return tokens, time.process_time() - start


def read_texts(folder: Path) -> list[str]:
    return [p.read_bytes().decode("utf-8", "replace") for p in sorted(folder.rglob("*")) if p.is_file()]


def chunk_texts(texts: list[str]) -> list[list[str]]:
    chunks, chunk, size = [], [], 0
    for t in texts:
        chunk.append(t)
        size += len(t)
        if size >= CHUNK_CHARS:
            chunks.append(chunk)
            chunk, size = [], 0
    if chunk:
        chunks.append(chunk)
    return chunks


def bench_raw(texts: list[str], vocab_dir: Path, workers: int) -> tuple[float, float, int]:
    """Wall seconds and CPU seconds (this process + workers) to encode all texts with `workers`
    processes (encoding only), and the token count."""
    chunks = chunk_texts(texts)
    if workers <= 1:
        _raw_init(str(vocab_dir))
        start, cpu = time.perf_counter(), time.process_time()
        tokens = sum(n for n, _ in map(_raw_encode, chunks))
        return time.perf_counter() - start, time.process_time() - cpu, tokens
    with multiprocessing.get_context("fork").Pool(workers, _raw_init, (str(vocab_dir),)) as pool:
        pool.map(_raw_ready, range(workers), chunksize=1)
        start, cpu = time.perf_counter(), time.process_time()
        results = list(pool.imap(_raw_encode, chunks))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        return seconds, cpu + sum(c for _, c in results), sum(n for n, _ in results)


# ---------------------------------------------------------------- the stage, in a subprocess

def stage_child(folder: str, vocab_dir: str, out_dir: str, workers: int, profile: bool) -> None:
    """Runs in a fresh interpreter: time tokenize_source and report as one JSON line."""
    from pipeline.config import SourceConfig
    from pipeline.tokenize import tokenize_source

    cfg = SourceConfig(format="text", path=folder, document="file")
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    def cpu(who: int) -> float:
        usage = resource.getrusage(who)
        return usage.ru_utime + usage.ru_stime

    start, cpu_start = time.perf_counter(), cpu(resource.RUSAGE_SELF) + cpu(resource.RUSAGE_CHILDREN)
    manifest = tokenize_source("bench", cfg, Path(vocab_dir), Path(out_dir), workers)
    seconds = time.perf_counter() - start
    cpu_seconds = cpu(resource.RUSAGE_SELF) + cpu(resource.RUSAGE_CHILDREN) - cpu_start  # workers are reaped by now
    if profiler:
        import pstats

        profiler.disable()
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(25)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "docs": manifest["docs"],
                "tokens": manifest["tokens"],
                "main_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "worker_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            }
        ),
        flush=True,
    )


def _tree_rss(proc) -> int:
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def bench_stage(folder: Path, vocab_dir: Path, out_dir: Path, workers: int, profile: bool) -> dict:
    import psutil

    cmd = [sys.executable, __file__, "--_stage", str(folder), str(vocab_dir), str(out_dir), str(workers)]
    if profile:
        cmd.append("--profile")
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=None if profile else subprocess.PIPE, text=True)
    proc = psutil.Process(child.pid)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                peak = max(peak, _tree_rss(proc))
            except psutil.Error:
                pass
            done.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = child.communicate()
    done.set()
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"stage subprocess failed ({child.returncode}):\n{stderr}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["tree_peak_rss_mb"] = peak / 2**20
    return result


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[10, 100])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=2, help="runs per size; the best time of each side is reported")
    parser.add_argument("--profile", action="store_true", help="cProfile the stage's main process (largest size)")
    parser.add_argument("--_stage", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._stage:
        folder, vocab_dir, out_dir, workers = args._stage
        stage_child(folder, vocab_dir, out_dir, int(workers), args.profile)
        return

    rows = []
    with tempfile.TemporaryDirectory(prefix="tokenize-bench-") as tmp:
        tmp = Path(tmp)
        vocab_dir = tmp / "vocab"
        get_vocab(vocab_dir)
        for size in args.sizes_mb:
            folder = tmp / f"corpus-{size:g}"
            nbytes, nfiles = build_corpus(folder, size)
            mb = nbytes / 1e6
            texts = read_texts(folder)
            stage, raw_s, raw_cpu = None, float("inf"), float("inf")
            for rep in range(args.repeat):  # interleaved; best of each (the machine may be shared)
                profile = args.profile and rep == 0 and size == max(args.sizes_mb)
                run = bench_stage(folder, vocab_dir, tmp / f"out-{size:g}", args.workers, profile)
                shutil.rmtree(tmp / f"out-{size:g}")
                if stage is None:
                    stage = run
                for key in ("seconds", "cpu_seconds"):
                    stage[key] = min(stage[key], run[key])
                for key in ("main_maxrss_mb", "worker_maxrss_mb", "tree_peak_rss_mb"):
                    stage[key] = max(stage[key], run[key])
                seconds, cpu_seconds, raw_tokens = bench_raw(texts, vocab_dir, args.workers)
                raw_s, raw_cpu = min(raw_s, seconds), min(raw_cpu, cpu_seconds)
            del texts
            shutil.rmtree(folder)
            if raw_tokens != stage["tokens"]:
                print(f"warning: {size:g} MB: raw counted {raw_tokens} tokens, the stage {stage['tokens']}", file=sys.stderr)
            rows.append((mb, nfiles, stage["tokens"], raw_s, raw_cpu, stage))
            print(f"{mb:.1f} MB done: raw {mb / raw_s:.2f} MB/s, stage {mb / stage['seconds']:.2f} MB/s", file=sys.stderr, flush=True)

    print(f"\nworkers={args.workers}, cpu_count={os.cpu_count()}, python {sys.version.split()[0]}\n")
    print("| corpus MB | files | tokens | raw tiktoken MB/s | stage MB/s | stage/raw (wall) | stage s | "
          "raw CPU s | stage CPU s | stage/raw (CPU) | peak RSS main MB | peak RSS max worker MB | peak RSS tree MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mb, nfiles, tokens, raw_s, raw_cpu, st in rows:
        raw_rate, stage_rate = mb / raw_s, mb / st["seconds"]
        print(
            f"| {mb:.1f} | {nfiles} | {tokens} | {raw_rate:.2f} | {stage_rate:.2f} | {stage_rate / raw_rate:.2f}x | "
            f"{st['seconds']:.2f} | {raw_cpu:.2f} | {st['cpu_seconds']:.2f} | {raw_cpu / st['cpu_seconds']:.2f}x | "
            f"{st['main_maxrss_mb']:.0f} | {st['worker_maxrss_mb']:.0f} | {st['tree_peak_rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
