"""The `pack` stage: documents -> blocks of `context_length + 1` tokens, as an index over the stores.

Each document is followed by EOS; a block holds `context_length + 1` tokens. Modes:
- concat:  the stream of documents cut into consecutive blocks; only the last block is padded.
- pad:     one document per block (a long one cut into block-sized chunks), padded.
- bestfit: long documents cut into block-sized chunks; the leftover chunks placed by
           best-fit-decreasing bin packing (Ding et al. 2024, "Fewer Truncations Improve Language
           Modeling"): no document that fits a block is cut, with little padding.

Planning works on document lengths alone (`plan_blocks`, vectorised for concat and pad), and the
plan is written as is: which piece of which document fills which part of which block (the format
is in `pipeline/blocks.py`). No token is copied; the trainer gathers them from the stores.

Writes `data/packed/train/` (the mixture) and `data/packed/val/<source>/` (each source's val
documents, in store order), replaced together, and the report `metrics/pack.json`.
"""

from __future__ import annotations

import os
from bisect import bisect_left, insort
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pipeline.arrays import rank_within
from pipeline.blocks import write_index
from pipeline.commands import stage_arguments
from pipeline.config import PackConfig, load_params
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_dir, read_json, sha256_file, write_json
from pipeline.paths import MANIFEST_FILE, METRICS_DIR, MIX_DIR, PACKED_DIR, SPLIT_DIR, TOKENS_DIR, VOCAB_DIR
from pipeline.store import TokenStore
from pipeline.tokenizer import tokenizer_info

METRICS_FILE = METRICS_DIR / "pack.json"


@dataclass
class Plan:
    """Blocks as pieces of documents: block b is pieces [block_offsets[b], block_offsets[b + 1])."""

    block_offsets: np.ndarray  # (blocks + 1,) int64
    doc: np.ndarray  # (pieces,) int64: the document, by its position in the packed list
    start: np.ndarray  # (pieces,) int64: first token of the piece in the document's tokens + EOS
    length: np.ndarray  # (pieces,) int64: tokens of the piece

    def __len__(self) -> int:
        return len(self.block_offsets) - 1


@dataclass
class Documents:
    """What to pack, in order: each document's store, its index there and the tokens to keep."""

    store: np.ndarray  # (n,) uint16: index into the list of stores
    doc: np.ndarray  # (n,) int64
    length: np.ndarray  # (n,) int64, EOS not counted


def plan_blocks(lengths: np.ndarray, width: int, mode: str) -> Plan:
    """Place documents of the given token lengths (EOS not counted) into blocks of `width` tokens."""
    sizes = np.asarray(lengths, dtype=np.int64) + 1
    if mode == "concat":
        return _plan_concat(sizes, width)
    if mode == "pad":
        return _plan_pad(sizes, width)
    if mode == "bestfit":
        return _plan_bestfit(sizes, width)
    raise PipelineError(f"pack.mode: unknown mode '{mode}'")


def _plan_concat(sizes: np.ndarray, width: int) -> Plan:
    ends = np.cumsum(sizes)
    starts = ends - sizes
    first, last = starts // width, (ends - 1) // width
    count = last - first + 1
    doc = np.repeat(np.arange(len(sizes)), count)
    block = np.repeat(first, count) + rank_within(count)
    begin = np.maximum(starts[doc], block * width)
    end = np.minimum(ends[doc], (block + 1) * width)
    n_blocks = int(last[-1]) + 1 if len(sizes) else 0
    return Plan(np.searchsorted(block, np.arange(n_blocks + 1)), doc, begin - starts[doc], end - begin)


def _plan_pad(sizes: np.ndarray, width: int) -> Plan:
    count = -(-sizes // width)
    doc = np.repeat(np.arange(len(sizes)), count)
    start = rank_within(count) * width
    return Plan(np.arange(len(doc) + 1), doc, start, np.minimum(width, sizes[doc] - start))


def _plan_bestfit(sizes: np.ndarray, width: int) -> Plan:
    full, rest = sizes // width, sizes % width
    doc = np.repeat(np.arange(len(sizes)), full)  # whole-block chunks first, in document order
    start = rank_within(full) * width
    cut = np.flatnonzero(rest)  # documents with a leftover chunk
    placed, bin_offsets = best_fit_decreasing(rest[cut], width)
    return Plan(
        block_offsets=np.concatenate([np.arange(len(doc)), len(doc) + bin_offsets]),
        doc=np.concatenate([doc, cut[placed]]),
        start=np.concatenate([start, full[cut[placed]] * width]),
        length=np.concatenate([np.full(len(doc), width), rest[cut[placed]]]),
    )


def best_fit_decreasing(sizes: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Longest chunk first (ties in input order), each into the open bin with the least room that
    fits it (ties: the bin that got that room last). Returns the chunks grouped by bin, in placement
    order, and the bins' offsets into that list."""
    order = np.lexsort((np.arange(len(sizes)), -sizes))
    bin_of = np.empty(len(sizes), dtype=np.int64)
    rooms: list[int] = []  # the distinct free rooms of open bins, sorted
    bins_with_room: dict[int, list[int]] = {}
    n_bins = 0
    for i, need in zip(order.tolist(), sizes[order].tolist()):
        at = bisect_left(rooms, need)
        if at < len(rooms):
            room = rooms[at]
            stack = bins_with_room[room]
            b = stack.pop()
            if not stack:
                del rooms[at], bins_with_room[room]
            left = room - need
        else:
            b, n_bins, left = n_bins, n_bins + 1, width - need
        bin_of[i] = b
        if left:
            if left not in bins_with_room:
                insort(rooms, left)
                bins_with_room[left] = []
            bins_with_room[left].append(b)
    placed = order[np.argsort(bin_of[order], kind="stable")]
    offsets = np.zeros(n_bins + 1, dtype=np.int64)
    np.cumsum(np.bincount(bin_of, minlength=n_bins), out=offsets[1:])
    return placed, offsets


def pack_documents(
    docs: Documents, stores: dict[str, Path], cfg: PackConfig, tokenizer: dict, folder: Path, location: Path, inputs: dict
) -> dict:
    """Plan `docs` into blocks and write the index into `folder` (which will live at `location`,
    the base of its relative store paths); return its manifest."""
    width = cfg.context_length + 1
    plan = plan_blocks(docs.length, width, cfg.mode)
    names = list(stores)
    real = int((docs.length + 1).sum())
    capacity = len(plan) * width
    per_source_docs = np.bincount(docs.store, minlength=len(names))
    per_source_tokens = np.bincount(docs.store, weights=docs.length + 1, minlength=len(names))
    manifest = {
        **tokenizer,
        "context_length": cfg.context_length,
        "mode": cfg.mode,
        "n_blocks": len(plan),
        "n_pieces": len(plan.doc),
        "n_tokens": real,
        "pad_fraction": 1 - real / capacity if capacity else 0.0,
        "sources": {n: {"docs": int(per_source_docs[i]), "tokens": int(per_source_tokens[i])}
                    for i, n in enumerate(names) if per_source_docs[i]},
        "stores": [{"source": n, "path": os.path.relpath(stores[n], location)} for n in names],
        "inputs": inputs,
    }
    folder.mkdir(parents=True, exist_ok=True)
    write_index(
        folder,
        block_offsets=plan.block_offsets,
        store=docs.store[plan.doc],
        doc=docs.doc[plan.doc],
        start=plan.start,
        length=plan.length,
        eos=plan.start + plan.length == docs.length[plan.doc] + 1,
    )
    write_json(folder / MANIFEST_FILE, manifest)
    return manifest


def mixture_documents() -> tuple[Documents, list[str], dict]:
    """The train mixture written by `mix`, its sources, and its input hash."""
    manifest_file = MIX_DIR / MANIFEST_FILE
    if not manifest_file.is_file():
        raise PipelineError(f"{manifest_file}: not found (run `dvc repro mix` first)")
    names = read_json(manifest_file)["sources"]
    columns = {c: np.load(MIX_DIR / f"{c}.npy") for c in ("source", "doc", "keep")}
    docs = Documents(store=columns["source"], doc=columns["doc"], length=columns["keep"])
    return docs, names, {"mix": sha256_file(manifest_file)}


def val_documents(name: str) -> tuple[Documents, dict]:
    """A source's val documents, in store order, whole, and the split's input hash."""
    val = np.load(SPLIT_DIR / name / "val.npy")
    offsets = TokenStore(TOKENS_DIR / name).offsets
    docs = Documents(store=np.zeros(len(val), dtype=np.uint16), doc=val, length=offsets[val + 1] - offsets[val])
    return docs, {"split": sha256_file(SPLIT_DIR / name / MANIFEST_FILE)}


@cli
def main(argv: Optional[Sequence[str]] = None) -> None:
    stage_arguments(__doc__, "pipeline.pack", argv)
    params = load_params()
    cfg = params.pack
    tokenizer = tokenizer_info(VOCAB_DIR)
    train_docs, train_sources, train_inputs = mixture_documents()
    with atomic_dir(PACKED_DIR) as tmp:
        train = pack_documents(
            train_docs, {n: TOKENS_DIR / n for n in train_sources}, cfg, tokenizer,
            tmp / "train", PACKED_DIR / "train", train_inputs,
        )
        metrics = {"train": _summary(train), "val": {}}
        for name in sorted(params.sources):
            docs, inputs = val_documents(name)
            val = pack_documents(
                docs, {name: TOKENS_DIR / name}, cfg, tokenizer, tmp / "val" / name, PACKED_DIR / "val" / name, inputs
            )
            metrics["val"][name] = _summary(val)
    write_json(METRICS_FILE, metrics)
    print(f"pack: {train['n_blocks']} train blocks of {cfg.context_length + 1} tokens, pad fraction {train['pad_fraction']:.4f}")


def _summary(manifest: dict) -> dict:
    return {
        "blocks": manifest["n_blocks"],
        "pad_fraction": round(manifest["pad_fraction"], 6),
        "tokens": {name: row["tokens"] for name, row in manifest["sources"].items()},
    }


if __name__ == "__main__":
    main()
