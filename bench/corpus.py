"""Benchmark corpora of realistic shapes, built offline from text that ships with Python.

    python bench/corpus.py jsonl OUT --mb 1000        # OUT/code.jsonl + OUT/prose.jsonl, ~3 KB documents
    python bench/corpus.py files OUT --mb 100         # stdlib .py files copied until OUT holds 100 MB

- `jsonl`: two sources of equal size, one JSON object `{"text": ...}` per line. Document sizes are
  drawn from a log-normal around 3 KB (clipped to 0.3-12 KB), like web pages or forum posts.
  `code` documents are runs of consecutive paragraphs of the standard library's `.py` files,
  starting at a random paragraph; `prose` documents are random sentences of `pydoc_data.topics`
  (Python's English documentation) grouped into paragraphs. Drawing pieces at random keeps most
  documents distinct (a 1 GB corpus from 12 MB of text repeats pieces, not documents), so
  duplicate-sensitive stages see a realistic load.
- `files`: the `.py` files themselves, copied over and over (read with `document: file`, ~16 KB
  documents, or `document: paragraph`, a few hundred bytes each).

Deterministic for a given `--seed`. MB = 10**6 bytes of UTF-8.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import sysconfig
from pathlib import Path

import numpy as np

STDLIB_SKIP_DIRS = {"site-packages", "test", "tests", "idle_test"}
PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = (p for p in root.rglob("*.py") if not STDLIB_SKIP_DIRS & set(p.relative_to(root).parts[:-1]))
    return sorted(p for p in files if p.stat().st_size > 0)


def code_paragraphs() -> list[str]:
    out = []
    for path in stdlib_files():
        text = path.read_bytes().decode("utf-8", "replace")
        out.extend(p for p in PARAGRAPH_BREAK.split(text) if p.strip())
    return out


def prose_sentences() -> list[str]:
    import pydoc_data.topics

    out = []
    for name in sorted(pydoc_data.topics.topics):
        for paragraph in PARAGRAPH_BREAK.split(pydoc_data.topics.topics[name]):
            out.extend(s.strip() for s in SENTENCE_END.split(paragraph) if len(s.strip()) > 20)
    return out


def doc_sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Target sizes in bytes: log-normal, median ~2.4 KB, mean ~3 KB, clipped to 0.3-12 KB."""
    return np.clip(rng.lognormal(mean=np.log(2400), sigma=0.65, size=n), 300, 12_000).astype(int)


def code_document(pool: list[str], rng: np.random.Generator, size: int) -> str:
    at, parts, total = int(rng.integers(len(pool))), [], 0
    while total < size:
        parts.append(pool[at % len(pool)])
        total += len(parts[-1]) + 2
        at += 1
    return "\n\n".join(parts)


def prose_document(pool: list[str], rng: np.random.Generator, size: int) -> str:
    paragraphs, sentences, total = [], [], 0
    while total < size:
        sentences.append(pool[int(rng.integers(len(pool)))])
        total += len(sentences[-1]) + 1
        if len(sentences) >= int(rng.integers(2, 7)):
            paragraphs.append(" ".join(sentences))
            sentences = []
    if sentences:
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def write_jsonl(path: Path, pool: list[str], make, target_bytes: int, rng: np.random.Generator) -> tuple[int, int]:
    written = docs = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < target_bytes:
            for size in doc_sizes(rng, 4096):
                line = json.dumps({"text": make(pool, rng, int(size))}, ensure_ascii=False) + "\n"
                out.write(line)
                written += len(line.encode("utf-8"))
                docs += 1
                if written >= target_bytes:
                    break
    return written, docs


def build_jsonl(out: Path, mb: float, seed: int = 0) -> dict:
    """`out/code.jsonl` and `out/prose.jsonl`, each about mb/2 MB; returns their sizes and counts."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    half = int(mb * 1e6 / 2)
    report = {}
    for name, pool, make in (("code", code_paragraphs(), code_document), ("prose", prose_sentences(), prose_document)):
        size, docs = write_jsonl(out / f"{name}.jsonl", pool, make, half, rng)
        report[name] = {"bytes": size, "docs": docs}
    return report


def build_files(out: Path, mb: float) -> dict:
    """Copy the stdlib `.py` files into `out/rNNN/` until it holds `mb` MB of whole files."""
    target, total, count, rep = int(mb * 1e6), 0, 0, 0
    files = stdlib_files()
    while total < target:
        for i, path in enumerate(files):
            data = path.read_bytes()
            dest = out / f"r{rep:03d}" / f"{i:05d}.py"
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            total, count = total + len(data), count + 1
            if total >= target:
                break
        rep += 1
    return {"bytes": total, "files": count}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shape", choices=["jsonl", "files"])
    p.add_argument("out", type=Path)
    p.add_argument("--mb", type=float, required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    report = build_jsonl(args.out, args.mb, args.seed) if args.shape == "jsonl" else build_files(args.out, args.mb)
    json.dump(report, sys.stdout)
    print()


if __name__ == "__main__":
    main()
