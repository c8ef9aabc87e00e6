"""The packed-block format: the contract between `pack` and the trainer.

A folder of packed blocks holds
- `tokens.npy`   (N, context_length + 1) uint16/uint32: the model reads `[:, :-1]`, predicts `[:, 1:]`;
- `segments.npy` (N, context_length + 1) uint16/uint32: 0 on padding, else the index (1, 2, ...) of
  the document each token belongs to within its block. A document's EOS belongs to that document.
- `manifest.json`: tokenizer, vocab size, eos/pad ids, context length, counts, pad fraction, hashes.

Both arrays are plain `.npy` files, opened memory-mapped: nothing is loaded whole into RAM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.io import read_json

TOKENS_FILE = "tokens.npy"
SEGMENTS_FILE = "segments.npy"
MANIFEST_FILE = "manifest.json"


@dataclass
class Blocks:
    """Memory-mapped packed blocks and their manifest."""

    tokens: np.ndarray  # (N, T + 1)
    segments: np.ndarray  # (N, T + 1), 0 = padding
    manifest: dict

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def context_length(self) -> int:
        return self.tokens.shape[1] - 1

    def batch(self, rows: np.ndarray | list[int]) -> dict[str, np.ndarray]:
        """Inputs, targets, loss mask and segment ids for the given block rows, as int64 / bool arrays."""
        rows = np.asarray(rows)
        tokens = self.tokens[rows].astype(np.int64)
        segments = self.segments[rows].astype(np.int64)
        return {
            "inputs": tokens[:, :-1],  # (B, T)
            "targets": tokens[:, 1:],  # (B, T)
            "loss_mask": segments[:, 1:] > 0,  # (B, T): the target is a real token
            "segment_ids": segments[:, :-1],  # (B, T): document index of each input position
        }


def load_blocks(path: str | Path) -> Blocks:
    """Open a packed-block folder written by the `pack` stage, memory-mapped."""
    path = Path(path)
    for name in (TOKENS_FILE, SEGMENTS_FILE, MANIFEST_FILE):
        if not (path / name).is_file():
            raise PipelineError(f"{path / name}: not found (run `dvc repro pack` first?)")
    tokens = np.load(path / TOKENS_FILE, mmap_mode="r")
    segments = np.load(path / SEGMENTS_FILE, mmap_mode="r")
    if tokens.shape != segments.shape or tokens.ndim != 2:
        raise PipelineError(f"{path}: tokens {tokens.shape} and segments {segments.shape} do not match")
    return Blocks(tokens=tokens, segments=segments, manifest=read_json(path / MANIFEST_FILE))


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def write_blocks(path: str | Path, tokens: np.ndarray, segments: np.ndarray, manifest: dict) -> None:
    """Write a small block folder from in-memory arrays (tests and tools; `pack` streams its own)."""
    from pipeline.io import atomic_dir, write_json

    with atomic_dir(path) as tmp:
        np.save(tmp / TOKENS_FILE, tokens)
        np.save(tmp / SEGMENTS_FILE, segments)
        write_json(tmp / MANIFEST_FILE, manifest)
