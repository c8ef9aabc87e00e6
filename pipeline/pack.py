"""The `pack` stage: documents -> fixed-size blocks (see `pipeline/blocks.py` for the format).

Each document is followed by EOS; a block holds `context_length + 1` tokens. Modes:
- concat:  the stream of documents cut into consecutive blocks; only the last block is padded.
- pad:     one document per block (a long one cut into block-sized chunks), padded.
- bestfit: long documents cut into block-sized chunks; the leftover chunks placed by
           best-fit-decreasing bin packing (Ding et al. 2024, "Fewer Truncations Improve Language
           Modeling"): no document that fits a block is cut, with little padding.

Planning works on document lengths alone (`plan_blocks`); `fill_blocks` then copies tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from pipeline.blocks import MANIFEST_FILE, SEGMENTS_FILE, TOKENS_FILE, token_dtype
from pipeline.config import PackConfig, load_params
from pipeline.docs import DocTable
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_dir, sha256_file, write_json
from pipeline.mix import MIX_DIR
from pipeline.split import SPLIT_DIR
from pipeline.vocab import VOCAB_DIR

PACKED_DIR = Path("data/packed")
METRICS_FILE = Path("metrics/pack.json")

Piece = tuple[int, int, int]  # (document index, start token, length) of a document's token+EOS sequence
Plan = list[list[Piece]]  # the pieces of each block, in order


def plan_blocks(lengths: Iterable[int], width: int, mode: str) -> Plan:
    """Place documents of the given token lengths (EOS not counted) into blocks of `width` tokens."""
    sizes = [int(n) + 1 for n in lengths]
    if mode == "concat":
        return _plan_concat(sizes, width)
    if mode == "pad":
        return [[(doc, start, min(width, size - start))] for doc, size in enumerate(sizes) for start in range(0, size, width)]
    blocks, leftovers = [], []
    for doc, size in enumerate(sizes):
        full, rest = divmod(size, width)
        blocks.extend([[(doc, k * width, width)] for k in range(full)])
        if rest:
            leftovers.append((doc, full * width, rest))
    if mode == "bestfit":
        return blocks + _best_fit_decreasing(leftovers, width)
    raise PipelineError(f"pack.mode: unknown mode '{mode}'")


def _plan_concat(sizes: list[int], width: int) -> Plan:
    blocks, current, used = [], [], 0
    for doc, size in enumerate(sizes):
        start = 0
        while start < size:
            take = min(size - start, width - used)
            current.append((doc, start, take))
            start, used = start + take, used + take
            if used == width:
                blocks.append(current)
                current, used = [], 0
    if current:
        blocks.append(current)
    return blocks


def _best_fit_decreasing(chunks: list[Piece], width: int) -> Plan:
    """Longest chunk first, each into the open block with the least room that still fits it."""
    order = sorted(range(len(chunks)), key=lambda i: (-chunks[i][2], i))
    bins: Plan = []
    room = _RoomIndex(width)
    for i in order:
        piece = chunks[i]
        found = room.take_tightest(piece[2])
        if found is None:
            bins.append([piece])
            left, b = width - piece[2], len(bins) - 1
        else:
            left, b = found[0] - piece[2], found[1]
            bins[b].append(piece)
        if left > 0:
            room.add(left, b)
    return bins


class _RoomIndex:
    """Open blocks by free room; finds the smallest room >= a size in O(log width) (a count tree)."""

    def __init__(self, width: int):
        self.size = 1 << (width + 1).bit_length()
        self.count = [0] * (2 * self.size)
        self.blocks: list[list[int]] = [[] for _ in range(width + 1)]

    def add(self, room: int, block: int) -> None:
        self.blocks[room].append(block)
        self._bump(room, 1)

    def take_tightest(self, need: int) -> tuple[int, int] | None:
        node = need + self.size
        if not self.count[node]:
            while node > 1:
                if node % 2 == 0 and self.count[node + 1]:
                    node += 1
                    while node < self.size:
                        node = 2 * node if self.count[2 * node] else 2 * node + 1
                    break
                node //= 2
            else:
                return None
        room = node - self.size
        self._bump(room, -1)
        return room, self.blocks[room].pop()

    def _bump(self, room: int, delta: int) -> None:
        node = room + self.size
        while node:
            self.count[node] += delta
            node //= 2


def fill_blocks(plan: Plan, docs: DocTable, eos_id: int, pad_id: int, width: int, out_dir: Path) -> None:
    """Write `tokens.npy` and `segments.npy` for `plan` into `out_dir`, row by row (memory-mapped)."""
    segment_dtype = token_dtype(width + 1)
    if not plan:
        np.save(out_dir / TOKENS_FILE, np.zeros((0, width), dtype=docs.dtype))
        np.save(out_dir / SEGMENTS_FILE, np.zeros((0, width), dtype=segment_dtype))
        return
    tokens = np.lib.format.open_memmap(out_dir / TOKENS_FILE, "w+", dtype=docs.dtype, shape=(len(plan), width))
    segments = np.lib.format.open_memmap(out_dir / SEGMENTS_FILE, "w+", dtype=segment_dtype, shape=(len(plan), width))
    for b, pieces in enumerate(plan):
        row = np.full(width, pad_id, dtype=docs.dtype)
        seg = np.zeros(width, dtype=segments.dtype)
        at = 0
        for s, (doc, start, length) in enumerate(pieces, 1):
            piece = docs.tokens(doc)[start : start + length]
            row[at : at + len(piece)] = piece
            if len(piece) < length:
                row[at + len(piece)] = eos_id
            seg[at : at + length] = s
            at += length
        tokens[b] = row
        segments[b] = seg
    tokens.flush()
    segments.flush()


def pack_documents(docs: DocTable, cfg: PackConfig, tokenizer: dict, out_dir: Path, inputs: dict) -> dict:
    """Pack every document of `docs` into `out_dir`; return its manifest."""
    width = cfg.context_length + 1
    plan = plan_blocks(docs.lengths, width, cfg.mode)
    sources = docs.sources
    per_source: dict[str, dict] = {}
    for name in sources:
        per_source.setdefault(name, {"docs": 0, "tokens": 0})
    for doc, length in enumerate(docs.lengths):
        per_source[sources[doc]]["docs"] += 1
        per_source[sources[doc]]["tokens"] += int(length) + 1
    real = int((docs.lengths + 1).sum())
    capacity = len(plan) * width
    manifest = {
        **tokenizer,
        "context_length": cfg.context_length,
        "mode": cfg.mode,
        "n_blocks": len(plan),
        "n_tokens": real,
        "pad_fraction": 1 - real / capacity if capacity else 0.0,
        "sources": per_source,
        "inputs": inputs,
    }
    with atomic_dir(out_dir) as tmp:
        fill_blocks(plan, docs, tokenizer["eos_id"], tokenizer["pad_id"], width, tmp)
        write_json(tmp / MANIFEST_FILE, manifest)
    return manifest


def tokenizer_info(vocab_dir: Path) -> dict:
    from pipeline.tokenizer import load_tokenizer

    tok = load_tokenizer(vocab_dir)
    return {"tokenizer": tok.name, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "pad_id": tok.pad_id}


@cli
def main() -> None:
    params = load_params()
    cfg = params.pack
    tokenizer = tokenizer_info(VOCAB_DIR)
    train_file = MIX_DIR / "train.arrow"
    metrics = {"train": {}, "val": {}}
    train = pack_documents(DocTable(train_file), cfg, tokenizer, PACKED_DIR / "train", {"mix": sha256_file(train_file)})
    metrics["train"] = _summary(train)
    for name in sorted(params.sources):
        val_file = SPLIT_DIR / name / "val.arrow"
        val = pack_documents(DocTable(val_file), cfg, tokenizer, PACKED_DIR / "val" / name, {"split": sha256_file(val_file)})
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
