"""Peak memory of the tokenize stage's main process against corpus size.

`python bench/tokenize_memory.py 10 100 300` builds a stdlib-code corpus of each size (MB), runs
`pipeline.tokenize.tokenize_source` with 2 workers in a fresh process per size, and prints the main
process's peak RSS and the peak of Python-level allocations (tracemalloc).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]


def measure(size_mb: float) -> None:
    from tokenize_bench import build_corpus, get_vocab

    import pipeline.tokenize as tokenize
    from pipeline.config import SourceConfig

    tmp = Path(tempfile.mkdtemp())
    build_corpus(tmp / "corpus", size_mb)
    get_vocab(tmp / "vocab")
    tracemalloc.start()
    tokenize.tokenize_source("c", SourceConfig(format="text", path=str(tmp / "corpus")), tmp / "vocab", tmp / "out", 2)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| {size_mb:g} | {peak_rss:.0f} | {tracemalloc.get_traced_memory()[1] / 1e6:.0f} |")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        measure(float(sys.argv[2]))
    else:
        print("| corpus MB | main peak RSS MB | Python allocations peak MB |\n|---:|---:|---:|")
        for size in sys.argv[1:] or ["10", "100", "300"]:
            subprocess.run([sys.executable, __file__, "--one", size], check=True)
