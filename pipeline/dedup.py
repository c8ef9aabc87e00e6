"""The `dedup` stage: exact and near-duplicate documents over the token stores, and the groups the
split keeps together.

- **Exact**: documents with the same content hash (the store's `hashes.npy`) are one group; the
  first copy in source order (the order of `sources` in params.yaml), then store order, is kept.
- **Near**: MinHash (the `rensa` library, Rust: ~70x faster than `datasketch` on the same shingles)
  over the document's word n-grams (lowercased `\\w+` words, decoded from the store), then
  LSH banding: two documents whose signatures agree on all `rows` of any of the `bands` become
  one cluster (transitively). The probability that a pair with Jaccard similarity J is caught is
  1 - (1 - J**rows)**bands. The first document of a cluster in source order is kept.
- **Groups**: every document gets the content hash of its group's kept document (`split_hashes.npy`),
  and the split decides train/val by that hash, so a cluster lands in one split as a whole: val
  never holds a near-duplicate of a train document, whether or not duplicates are removed.

Writes `data/dedup/<source>/` (`keep.npy`: bool per document of the store; `split_hashes.npy`),
`metrics/dedup.json` and `reports/dedup.md` (what was removed, the largest clusters). Nothing of the tokens is
copied. Memory: the signatures are reduced to one 8-byte key per band and kept on disk; clustering
reads one band at a time (16 bytes per document), plus a few int64 arrays per document.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from pipeline.commands import stage_arguments
from pipeline.config import DedupConfig, NearDedupConfig, load_params
from pipeline.errors import cli
from pipeline.io import atomic_dir, atomic_file, remove_dropped_sources, sha256_file, temp_prefix, write_json
from pipeline.parallel import Workers, ordered_parallel_map, workers_for
from pipeline.paths import DEDUP_DIR, DEDUP_METRICS, DEDUP_REPORT, KEEP_FILE, MANIFEST_FILE, SPLIT_HASHES_FILE, TOKENS_DIR, VOCAB_DIR
from pipeline.store import TokenStore
from pipeline.tokenizer import Tokenizer, load_tokenizer

WORD = re.compile(r"\w+")
TASK_DOCS = 512  # documents per signature task
REPORT_CLUSTERS = 10
REPORT_CHARS = 200
_MIX = np.uint64(0x9E3779B97F4A7C15)


def shingles(text: str, n: int) -> list[str]:
    """The word n-grams of `text` (lowercased `\\w+` words); a shorter text is one shingle, no words none."""
    words = WORD.findall(text.lower())
    if len(words) <= n:
        return [" ".join(words)] if words else []
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def band_keys(texts: list[str], cfg: NearDedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(len(texts), bands) uint64 LSH keys (one per band of `rows` MinHash values), and which texts
    have words at all (those without get no key and are never near-duplicates)."""
    from rensa import RMinHash

    keys = np.zeros((len(texts), cfg.bands), dtype=np.uint64)
    has_words = np.zeros(len(texts), dtype=bool)
    signatures = []
    for i, text in enumerate(texts):
        grams = shingles(text, cfg.ngram)
        if grams:
            minhash = RMinHash(cfg.num_perm, cfg.seed)
            minhash.update(grams)
            signatures.append(minhash.digest())
            has_words[i] = True
    if signatures:
        rows = np.asarray(signatures, dtype=np.uint64).reshape(-1, cfg.bands, cfg.rows)
        keys[has_words] = _combine(rows)
    return keys, has_words


def _combine(rows: np.ndarray) -> np.ndarray:
    """(n, bands, rows) uint32 values in uint64 -> (n, bands) uint64 keys: a polynomial over the rows
    (wrapping), then a splitmix64-style finaliser. Equal rows give equal keys; unequal rows collide
    with probability ~2**-64."""
    with np.errstate(over="ignore"):
        key = np.zeros(rows.shape[:2], dtype=np.uint64)
        for j in range(rows.shape[2]):
            key = key * _MIX + rows[:, :, j] + np.uint64(1)
        key ^= key >> np.uint64(31)
        key *= np.uint64(0xBF58476D1CE4E5B9)
        key ^= key >> np.uint64(29)
    return key


class Clusters:
    """Union-find over document numbers whose root is always the smallest member (the kept one)."""

    def __init__(self, size: int):
        self.parent = np.arange(size, dtype=np.int64)

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> np.ndarray:
        """Every member's root, by pointer jumping (parents are never larger than their children)."""
        parent = self.parent.copy()
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                return parent
            parent = grand


def link_bands(keys: np.ndarray, members: np.ndarray, clusters: Clusters) -> None:
    """Join the documents `members` (columns of the band-major `keys`, (bands, n)) whose keys agree in
    any band; one band of the (possibly memory-mapped) keys is in memory at a time."""
    for band in range(keys.shape[0]):
        column = np.asarray(keys[band])[members]
        order = np.argsort(column, kind="stable")
        same = column[order[1:]] == column[order[:-1]]
        for a, b in zip(members[order[:-1][same]].tolist(), members[order[1:][same]].tolist()):
            clusters.union(a, b)


def cluster_texts(texts: list[str], cfg: NearDedupConfig) -> np.ndarray:
    """Each text's near-duplicate cluster, as the index of its first member (in memory; for tests,
    benchmarks and small lists)."""
    keys, has_words = band_keys(texts, cfg)
    clusters = Clusters(len(texts))
    link_bands(keys.T, np.flatnonzero(has_words), clusters)
    return clusters.roots()


@dataclass
class Corpus:
    """The documents of several stores as one numbered sequence, in source order."""

    names: list[str]
    stores: list[TokenStore]

    def __post_init__(self) -> None:
        self.starts = np.cumsum([0] + [len(s) for s in self.stores], dtype=np.int64)
        self.hashes = np.concatenate([np.asarray(s.hashes) for s in self.stores]) if self.stores else np.zeros((0, 16), np.uint8)
        self.lengths = np.concatenate([s.lengths for s in self.stores]) if self.stores else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, doc: int) -> tuple[int, int]:
        """Global document number -> (store number, index in that store)."""
        s = int(np.searchsorted(self.starts, doc, side="right") - 1)
        return s, doc - int(self.starts[s])


_worker: dict = {}


def _init_worker(folders: list[str], vocab_dir: str, cfg: NearDedupConfig) -> None:
    _worker.update(stores=[TokenStore(f) for f in folders], tokenizer=load_tokenizer(vocab_dir), cfg=cfg)


def _signature_task(task: tuple[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    store_number, indices = task
    store, tokenizer = _worker["stores"][store_number], _worker["tokenizer"]
    bos = getattr(tokenizer, "bos_id", None)
    documents = (store.document(int(i)) for i in indices)
    texts = [tokenizer.decode(d[1:] if bos is not None and len(d) and d[0] == bos else d) for d in documents]
    return band_keys(texts, _worker["cfg"])


def _tasks(corpus: Corpus, docs: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Signature tasks over the global documents `docs` (ascending): runs of one store, TASK_DOCS long."""
    store_of = np.searchsorted(corpus.starts, docs, side="right") - 1
    for s in range(len(corpus.stores)):
        local = docs[store_of == s] - corpus.starts[s]
        for at in range(0, len(local), TASK_DOCS):
            yield s, local[at : at + TASK_DOCS]


def group_documents(corpus: Corpus, cfg: DedupConfig, vocab_dir: Path, workers: int | Workers, scratch: Path) -> tuple[np.ndarray, np.ndarray]:
    """For each document: its exact group's first member and its final group's first member (the
    near cluster of its exact group when near dedup is enabled), both as global document numbers."""
    exact_first = np.empty(len(corpus), dtype=np.int64)
    final_first = np.empty(len(corpus), dtype=np.int64)
    scopes = [np.arange(len(corpus))] if cfg.scope == "all" else [np.arange(a, b) for a, b in zip(corpus.starts[:-1], corpus.starts[1:])]
    for docs in scopes:
        keys128 = np.ascontiguousarray(corpus.hashes[docs]).view(np.uint64).reshape(-1, 2)
        _, first, inverse = np.unique(keys128, axis=0, return_index=True, return_inverse=True)
        exact_first[docs] = docs[first[inverse.ravel()]]
        final_first[docs] = exact_first[docs]
        if cfg.near.enabled and len(docs):
            firsts = np.unique(exact_first[docs])  # one signature per distinct text
            roots = _near_roots(corpus, firsts, cfg.near, vocab_dir, workers, scratch)
            lookup = np.full(len(corpus), -1, dtype=np.int64)
            lookup[firsts] = roots
            final_first[docs] = lookup[exact_first[docs]]
    return exact_first, final_first


def _near_roots(corpus: Corpus, docs: np.ndarray, cfg: NearDedupConfig, vocab_dir: Path, workers: int | Workers, scratch: Path) -> np.ndarray:
    """The first member of each of `docs`' near-duplicate clusters (band keys spilled to `scratch`)."""
    keys = np.lib.format.open_memmap(scratch / "band_keys.npy", mode="w+", dtype=np.uint64, shape=(cfg.bands, len(docs)))
    has_words = np.zeros(len(docs), dtype=bool)
    at = 0
    folders = [str(s.folder) for s in corpus.stores]
    results = ordered_parallel_map(_signature_task, _tasks(corpus, docs), workers, _init_worker, (folders, str(vocab_dir), cfg))
    for part_keys, part_words in results:
        keys[:, at : at + len(part_keys)] = part_keys.T
        has_words[at : at + len(part_keys)] = part_words
        at += len(part_keys)
    keys.flush()
    clusters = Clusters(len(docs))
    with_words = np.flatnonzero(has_words)
    link_bands(keys, with_words, clusters)
    del keys
    (scratch / "band_keys.npy").unlink()
    return docs[clusters.roots()]


def dedup(corpus: Corpus, cfg: DedupConfig, vocab_dir: Path, out_dir: Path, workers: int | Workers) -> tuple[dict, str]:
    """Write `keep.npy` and `split_hashes.npy` per source into `out_dir`; return the metrics and the report."""
    tokenizer = load_tokenizer(vocab_dir)
    # the scratch folder is named as a temp of `out_dir`, so the next run removes it if this one is killed
    with atomic_dir(out_dir) as tmp, tempfile.TemporaryDirectory(prefix=temp_prefix(out_dir), dir=tmp.parent) as scratch:
        exact_first, final_first = group_documents(corpus, cfg, vocab_dir, workers, Path(scratch))
        doc = np.arange(len(corpus))
        if cfg.near.enabled and cfg.near.remove:
            keep = doc == final_first
        elif cfg.exact:
            keep = doc == exact_first
        else:
            keep = np.ones(len(corpus), dtype=bool)
        split_hashes = corpus.hashes[final_first]
        for s, name in enumerate(corpus.names):
            part = slice(corpus.starts[s], corpus.starts[s + 1])
            (tmp / name).mkdir()
            np.save(tmp / name / KEEP_FILE, keep[part])
            np.save(tmp / name / SPLIT_HASHES_FILE, split_hashes[part])
        metrics = dedup_metrics(corpus, cfg, exact_first, final_first, keep)
        text = report(corpus, tokenizer, cfg, final_first, metrics)
        inputs = {name: sha256_file(store.folder / MANIFEST_FILE) for name, store in zip(corpus.names, corpus.stores)}
        write_json(tmp / MANIFEST_FILE, {"dedup": asdict(cfg), "inputs": inputs})
    return metrics, text


def dedup_metrics(corpus: Corpus, cfg: DedupConfig, exact_first: np.ndarray, final_first: np.ndarray, keep: np.ndarray) -> dict:
    """Per source: documents and tokens in, removed as exact and as near copies, kept; near clusters
    (groups of two or more distinct texts, counted at their kept document's source)."""
    doc = np.arange(len(corpus))
    exact_copy = (doc != exact_first) & ~keep
    near_copy = (doc == exact_first) & ~keep
    cluster_sizes = np.bincount(final_first[doc == exact_first], minlength=len(corpus))
    first_source = np.searchsorted(corpus.starts, exact_first, side="right") - 1
    out: dict = {"sources": {}, "settings": asdict(cfg)}
    for s, name in enumerate(corpus.names):
        part = slice(corpus.starts[s], corpus.starts[s + 1])
        tokens = corpus.lengths[part]
        kept_in = {corpus.names[f]: int(n) for f, n in enumerate(np.bincount(first_source[part][exact_copy[part]], minlength=len(corpus.names))) if n}
        out["sources"][name] = {
            "docs": int(tokens.size), "tokens": int(tokens.sum()),
            "exact_removed_docs": int(exact_copy[part].sum()), "exact_removed_tokens": int(tokens[exact_copy[part]].sum()),
            "exact_kept_in": kept_in,
            "near_removed_docs": int(near_copy[part].sum()), "near_removed_tokens": int(tokens[near_copy[part]].sum()),
            "near_clusters": int((cluster_sizes[part] >= 2).sum()),
            "kept_docs": int(keep[part].sum()), "kept_tokens": int(tokens[keep[part]].sum()),
        }
    return out


def report(corpus: Corpus, tokenizer: Tokenizer, cfg: DedupConfig, final_first: np.ndarray, metrics: dict) -> str:
    """Markdown: what was removed per source, and the largest groups with the start of their kept document."""
    lines = ["# Deduplication", "", f"Settings: `{asdict(cfg)}`", "",
             "| source | docs | exact removed | near removed | near clusters | kept docs | kept tokens |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, m in metrics["sources"].items():
        lines.append(f"| {name} | {m['docs']} | {m['exact_removed_docs']} | {m['near_removed_docs']} | {m['near_clusters']} | {m['kept_docs']} | {m['kept_tokens']} |")
    sizes = np.bincount(final_first, minlength=len(corpus))
    largest = [int(g) for g in np.argsort(-sizes, kind="stable")[:REPORT_CLUSTERS] if sizes[g] >= 2]
    lines += ["", f"## The {len(largest)} largest groups (documents, counting exact copies)", ""]
    for rank, first in enumerate(largest, 1):
        members = np.flatnonzero(final_first == first)
        per_source = np.bincount(np.searchsorted(corpus.starts, members, side="right") - 1, minlength=len(corpus.names))
        s, i = corpus.locate(first)
        text = tokenizer.decode(corpus.stores[s].document(i))[:REPORT_CHARS]
        spread = ", ".join(f"{corpus.names[k]} {n}" for k, n in enumerate(per_source) if n)
        lines += [f"{rank}. **{sizes[first]} documents** ({spread}); kept: {corpus.names[s]} #{i}", "", "   > " + text.replace("\n", "\n   > "), ""]
    return "\n".join(lines) + "\n"


@cli
def main(argv: Optional[Sequence[str]] = None) -> None:
    stage_arguments(__doc__, "pipeline.dedup", argv)
    params = load_params()
    names = list(params.sources)
    remove_dropped_sources(TOKENS_DIR, names, "dedup")
    corpus = Corpus(names, [TokenStore(TOKENS_DIR / n) for n in names])
    metrics, text = dedup(corpus, params.dedup, VOCAB_DIR, DEDUP_DIR, workers_for(params.executor))
    write_json(DEDUP_METRICS, metrics)
    with atomic_file(DEDUP_REPORT) as handle:
        handle.write(text)
    for name, m in metrics["sources"].items():
        print(f"dedup {name}: {m['docs']} docs, removed {m['exact_removed_docs']} exact and {m['near_removed_docs']} near copies; kept {m['kept_docs']}")


if __name__ == "__main__":
    main()
