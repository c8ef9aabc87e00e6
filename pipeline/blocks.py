"""The packed-block format: the contract between `pack` and the trainer.

A block is `context_length + 1` tokens: the model reads `[:-1]` and predicts `[1:]`. A folder of
packed blocks stores no tokens. It holds an index of *pieces*, each a run of consecutive tokens of
one document in a token store (`pipeline/store.py`), and the blocks they fill, in order:
- `block_offsets.npy` (blocks + 1,) int64: block b is pieces [block_offsets[b], block_offsets[b+1]);
- `piece_store.npy` (pieces,) uint16: which of the manifest's `stores` holds the document;
- `piece_doc.npy` (pieces,) int64: the document's index in that store;
- `piece_start.npy` (pieces,) int64: the piece's first token within the document's tokens + EOS;
- `piece_length.npy` (pieces,) int64: its number of tokens;
- `piece_eos.npy` (pieces,) bool: its last token is the document's EOS (added on read: stores hold
  no separators; the document may have been cut short by the mixture, so this is not derivable);
- `manifest.json`: tokenizer, vocab size, eos/pad ids, context length, counts, pad fraction,
  `stores` (source name and path relative to this folder) and the hashes of its inputs.

`load_blocks(path).read(rows)` gathers any blocks into (rows, context_length + 1) arrays of tokens
and segment ids, vectorised (a few numpy calls per batch, one fancy index per store): segment ids
number a block's pieces 1, 2, ... (a piece is one document; its EOS belongs to it) and are 0 on
padding, which holds `pad_id`. That gives the loss mask and the document boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.arrays import rank_within, ranges
from pipeline.errors import PipelineError
from pipeline.io import atomic_dir, read_json, write_json
from pipeline.paths import MANIFEST_FILE
from pipeline.store import StoreWriter, TokenStore, token_dtype

INDEX_COLUMNS = {
    "block_offsets": np.int64,
    "piece_store": np.uint16,
    "piece_doc": np.int64,
    "piece_start": np.int64,
    "piece_length": np.int64,
    "piece_eos": np.bool_,
}


def write_index(folder: Path, **columns: np.ndarray) -> None:
    """Write the index columns (names without `piece_`, plus `block_offsets`) into `folder`."""
    for name, dtype in INDEX_COLUMNS.items():
        np.save(folder / f"{name}.npy", np.asarray(columns[name.removeprefix("piece_")], dtype=dtype))


@dataclass
class Blocks:
    """Packed blocks: the memory-mapped index, the stores it points into, and the manifest."""

    index: dict[str, np.ndarray]
    stores: list[TokenStore]
    manifest: dict

    def __len__(self) -> int:
        return len(self.index["block_offsets"]) - 1

    @property
    def context_length(self) -> int:
        return int(self.manifest["context_length"])

    @property
    def dtype(self) -> np.dtype:
        return self.stores[0].dtype if self.stores else token_dtype(int(self.manifest["vocab_size"]))

    def read(self, rows: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and segment ids (0 = padding) of the given blocks, both (len(rows), context_length + 1)."""
        rows = np.asarray(rows, dtype=np.int64)
        first = self.index["block_offsets"][rows]
        count = self.index["block_offsets"][rows + 1] - first  # (B,) pieces per block
        piece = ranges(first, count)  # (P,) the blocks' pieces, in order
        length = self.index["piece_length"][piece]  # (P,)
        store = self.index["piece_store"][piece]  # (P,)
        base = self.index["piece_start"][piece].copy()  # (P,) -> the piece's first position in its store
        for s in np.unique(store):
            here = store == s
            base[here] += self.stores[s].offsets[self.index["piece_doc"][piece[here]]]
        per_block = np.bincount(np.repeat(np.arange(len(rows)), count), weights=length, minlength=len(rows))
        per_block = per_block.astype(np.int64)  # (B,) real tokens per block
        owner = np.repeat(np.arange(len(piece)), length)  # (N,) each token's piece
        within = rank_within(length)  # (N,) its place in the piece
        eos = self.index["piece_eos"][piece][owner] & (within == length[owner] - 1)
        values = np.full(len(owner), self.manifest["eos_id"], dtype=self.dtype)
        for s in np.unique(store):
            here = (store[owner] == s) & ~eos
            values[here] = self.stores[s].take(base[owner[here]] + within[here])
        row, column = np.repeat(np.arange(len(rows)), per_block), rank_within(per_block)
        tokens = np.full((len(rows), self.context_length + 1), self.manifest["pad_id"], dtype=self.dtype)
        segments = np.zeros((len(rows), self.context_length + 1), dtype=np.int64)
        tokens[row, column] = values
        segments[row, column] = np.repeat(rank_within(count) + 1, length)
        return tokens, segments

    def batch(self, rows: np.ndarray | list[int]) -> dict[str, np.ndarray]:
        """Inputs, targets, loss mask and segment ids for the given block rows, as int64 / bool arrays."""
        tokens, segments = self.read(rows)
        tokens = tokens.astype(np.int64)
        return {
            "inputs": tokens[:, :-1],  # (B, T)
            "targets": tokens[:, 1:],  # (B, T)
            "loss_mask": segments[:, 1:] > 0,  # (B, T): the target is a real token
            "segment_ids": segments[:, :-1],  # (B, T): document index of each input position
        }


def load_blocks(path: str | Path) -> Blocks:
    """Open a packed-block folder written by the `pack` stage (index and stores memory-mapped)."""
    path = Path(path)
    files = [path / MANIFEST_FILE] + [path / f"{name}.npy" for name in INDEX_COLUMNS]
    for file in files:
        if not file.is_file():
            raise PipelineError(f"{file}: not found (run `dvc repro pack` first?)")
    manifest = read_json(path / MANIFEST_FILE)
    index = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in INDEX_COLUMNS}
    stores = [TokenStore(path / entry["path"]) for entry in manifest["stores"]]
    return Blocks(index=index, stores=stores, manifest=manifest)


def write_blocks(path: str | Path, tokens: np.ndarray, segments: np.ndarray, manifest: dict) -> None:
    """A small block folder holding exactly the given (N, T + 1) tokens and segment ids (tests, tools).

    Each run of one non-zero segment id becomes a document of a private store (`path/store/`, EOS
    stored as a token); segment 0 is padding, read back as `manifest["pad_id"]`, and must end a block.
    """
    docs, per_block = [], []
    for row, seg in zip(np.asarray(tokens), np.asarray(segments)):
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(seg)) + 1, [len(seg)]])
        runs = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if seg[a] > 0]
        real = seg > 0
        if not real[: int(real.sum())].all():
            raise ValueError("write_blocks: padding (segment 0) must come last in a block")
        docs += [row[a:b] for a, b in runs]
        per_block.append(len(runs))
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    with atomic_dir(path) as tmp:
        (tmp / "store").mkdir()
        writer = StoreWriter(tmp / "store", token_dtype(int(manifest["vocab_size"])))
        writer.append(np.concatenate(docs) if docs else np.zeros(0), lengths, np.zeros((len(docs), 16), dtype=np.uint8))
        write_json(tmp / "store" / MANIFEST_FILE, writer.close())
        block_offsets = np.concatenate([[0], np.cumsum(per_block, dtype=np.int64)])
        n = len(docs)
        write_index(tmp, block_offsets=block_offsets, store=np.zeros(n), doc=np.arange(n), start=np.zeros(n),
                    length=lengths, eos=np.zeros(n, dtype=bool))
        write_json(tmp / MANIFEST_FILE, {**manifest, "stores": [{"source": "blocks", "path": "store"}]})
