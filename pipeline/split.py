"""The `split@<source>` stage: train/val by a stable hash of each document's group, over the
documents the `dedup` stage keeps.

A document goes to val when its group's hash says so (`pipeline.hashing.is_val`: the first 8 bytes,
read as a big-endian fraction of 2**64, below `split.val_fraction`). The group hash is the content
hash of the first document of its duplicate group (`dedup`'s `split_hashes.npy`), so identical and
near-identical documents share a split; a document without duplicates splits by its own content.
The decision never changes with the mixture or the seed.

Writes `data/split/<source>/`: `train.npy` and `val.npy`, the ascending indices (int64) of the
documents in the source's token store, and `manifest.json` (counts, the store's manifest hash).
Memory stays flat: the hashes are read in chunks of CHUNK_DOCS.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pipeline.arrays import NpyWriter
from pipeline.commands import stage_arguments
from pipeline.config import SplitConfig, entry, load_params
from pipeline.errors import PipelineError, cli
from pipeline.hashing import is_val, val_threshold
from pipeline.io import atomic_dir, sha256_file, write_json
from pipeline.paths import DEDUP_DIR, KEEP_FILE, MANIFEST_FILE, SPLIT_DIR, SPLIT_HASHES_FILE, TOKENS_DIR
from pipeline.store import TokenStore

SPLITS = ("train", "val")
CHUNK_DOCS = 1 << 20


def split_store(store: TokenStore, cfg: SplitConfig, out_dir: Path, name: str, groups: Optional[Path] = None) -> dict:
    """Write `train.npy`, `val.npy` and the manifest into `out_dir`; return the counts per split.
    `groups`: the source's dedup folder (kept documents, group hashes); None keeps every document
    and splits it by its own content hash."""
    threshold = val_threshold(cfg.val_fraction)
    if groups is None:
        keep, hashes = np.ones(len(store), dtype=bool), store.hashes
    else:
        if not (groups / KEEP_FILE).is_file():
            raise PipelineError(f"{groups}: no dedup output for this source (run `dvc repro dedup` first)")
        keep, hashes = np.load(groups / KEEP_FILE, mmap_mode="r"), np.load(groups / SPLIT_HASHES_FILE, mmap_mode="r")
    if len(keep) != len(store):
        raise PipelineError(f"{groups}: made for another token store ({len(keep)} documents, the store has {len(store)}); run `dvc repro dedup`")
    counts = {split: {"docs": 0, "tokens": 0} for split in SPLITS}
    with atomic_dir(out_dir) as tmp:
        writers = {split: NpyWriter(tmp / f"{split}.npy", np.int64) for split in SPLITS}
        for start in range(0, len(store), CHUNK_DOCS):
            stop = min(start + CHUNK_DOCS, len(store))
            val = is_val(hashes[start:stop], threshold)
            kept = keep[start:stop]
            lengths = np.diff(store.offsets[start : stop + 1])
            for split, chosen in (("train", ~val & kept), ("val", val & kept)):
                writers[split].append(np.flatnonzero(chosen) + start)
                counts[split]["docs"] += int(chosen.sum())
                counts[split]["tokens"] += int(lengths[chosen].sum())
        for writer in writers.values():
            writer.close()
        if len(store) and not np.any(keep):
            raise PipelineError(f"sources.{name}: dedup removed every document (copies of another source? see reports/dedup.md)")
        if counts["train"]["docs"] == 0:
            raise PipelineError(f"sources.{name}: every document landed in val; lower split.val_fraction")
        inputs = {"store": sha256_file(store.folder / MANIFEST_FILE)}
        if groups is not None:
            inputs["dedup"] = sha256_file(groups.parent / MANIFEST_FILE)
        write_json(tmp / MANIFEST_FILE, {"source": name, "val_fraction": cfg.val_fraction, **counts, "inputs": inputs})
    return counts


@cli
def main(argv: Optional[Sequence[str]] = None) -> None:
    args = stage_arguments(__doc__, "pipeline.split", argv, entries="sources")
    params = load_params()
    name = entry(args.name, params.sources, "sources")
    cfg = params.split
    counts = split_store(TokenStore(TOKENS_DIR / name), cfg, SPLIT_DIR / name, name, groups=DEDUP_DIR / name)
    if cfg.val_fraction > 0 and counts["val"]["docs"] == 0:
        print(f"split {name}: warning: no document landed in val ({counts['train']['docs']} documents)", file=sys.stderr)
    print(f"split {name}: train {counts['train']}, val {counts['val']}")


if __name__ == "__main__":
    main()
