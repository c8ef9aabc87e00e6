"""The token store: one source's documents, tokenized once, memory-mapped by every later stage.

A store folder (`data/tokens/<source>/`) holds
- `tokens-NNNNN.bin`: the token ids of all documents back to back, no separators, raw uint16
  (uint32 when the vocabulary does not fit), in shards of at most SHARD_TOKENS tokens; a document
  never spans two shards;
- `offsets.npy` (docs + 1,) int64: document i is tokens [offsets[i], offsets[i+1]) of the
  concatenated shards (its EOS is not stored: readers add it);
- `hashes.npy` (docs, 16) uint8: blake2b-128 of each document's UTF-8 text, its content identity
  (the split is decided by it; identical texts have identical hashes);
- `manifest.json`: tokenizer, vocab size, dtype, shards, counts, and what reading the source met.

Everything after tokenize (split, mix, pack) writes indices into stores, never tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.arrays import NpyWriter
from pipeline.errors import PipelineError
from pipeline.io import read_json
from pipeline.paths import MANIFEST_FILE

OFFSETS_FILE = "offsets.npy"
HASHES_FILE = "hashes.npy"
SHARD_PATTERN = "tokens-{:05d}.bin"
SHARD_TOKENS = 1 << 30  # 2 GiB of uint16 per shard


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class StoreWriter:
    """Appends batches of documents (tokens back to back, lengths, hashes) to a store folder."""

    def __init__(self, folder: str | Path, dtype, shard_tokens: int = SHARD_TOKENS, hash_bytes: int = 16):
        self.folder = Path(folder)
        self.dtype = np.dtype(dtype)
        self.shard_tokens = shard_tokens
        self.shards: list[dict] = []
        self.docs = 0
        self.tokens = 0
        self._shard = None
        self._offsets = NpyWriter(self.folder / OFFSETS_FILE, np.int64)
        self._offsets.append(np.zeros(1, dtype=np.int64))
        self._hashes = NpyWriter(self.folder / HASHES_FILE, np.uint8, (hash_bytes,))  # pipeline.hashing's width

    def append(self, tokens: np.ndarray, lengths: np.ndarray, hashes: np.ndarray) -> None:
        """One batch: `tokens` of all its documents concatenated, their `lengths` and `hashes` (n, 16)."""
        if self._shard is None or (self.shards[-1]["tokens"] and self.shards[-1]["tokens"] + len(tokens) > self.shard_tokens):
            self._next_shard()
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        if tokens.size:
            self._shard.write(memoryview(tokens).cast("B"))
        self._offsets.append(self.tokens + np.cumsum(lengths, dtype=np.int64))
        self._hashes.append(hashes)
        self.shards[-1]["tokens"] += len(tokens)
        self.tokens += len(tokens)
        self.docs += len(lengths)

    def _next_shard(self) -> None:
        if self._shard is not None:
            self._shard.close()
        name = SHARD_PATTERN.format(len(self.shards))
        self._shard = open(self.folder / name, "wb")
        self.shards.append({"file": name, "tokens": 0})

    def close(self) -> dict:
        """Finish the files; return the store's layout for its manifest."""
        if self._shard is None:
            self._next_shard()
        self._shard.close()
        self._offsets.close()
        self._hashes.close()
        return {"dtype": self.dtype.name, "docs": self.docs, "tokens": self.tokens, "shards": self.shards}


class TokenStore:
    """A store folder, memory-mapped: `offsets`, `hashes`, `lengths`, `document(i)`, `take(positions)`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not (self.folder / MANIFEST_FILE).is_file():
            raise PipelineError(f"{self.folder}: no token store (run `dvc repro tokenize` first?)")
        self.manifest = read_json(self.folder / MANIFEST_FILE)
        self.dtype = np.dtype(self.manifest["dtype"])
        self.offsets = np.load(self.folder / OFFSETS_FILE, mmap_mode="r")
        self.hashes = np.load(self.folder / HASHES_FILE, mmap_mode="r")
        shards = self.manifest["shards"]
        self._shards = [
            np.memmap(self.folder / s["file"], dtype=self.dtype, mode="r") if s["tokens"] else np.zeros(0, self.dtype)
            for s in shards
        ]
        self._shard_starts = np.cumsum([0] + [s["tokens"] for s in shards[:-1]], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per document (EOS not counted), int64."""
        return np.diff(self.offsets)

    def document(self, i: int) -> np.ndarray:
        return self.take(np.arange(self.offsets[i], self.offsets[i + 1]))

    def take(self, positions: np.ndarray) -> np.ndarray:
        """Tokens at the given positions of the concatenated shards (one fancy index per shard)."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(self._shards) == 1:
            return self._shards[0][positions]
        shard = np.searchsorted(self._shard_starts, positions, side="right") - 1
        out = np.empty(len(positions), dtype=self.dtype)
        for s in np.unique(shard):
            here = shard == s
            out[here] = self._shards[s][positions[here] - self._shard_starts[s]]
        return out
