"""Numpy building blocks of the index stages: `.npy` files written in pieces, and grouped ranges."""

from __future__ import annotations

from pathlib import Path

import numpy as np

HEADER_BYTES = 128  # a fixed .npy v1 header, rewritten with the final shape on close


class NpyWriter:
    """Append rows to a `.npy` file without knowing their number in advance (memory stays flat).

    The header is reserved up front and rewritten with the real shape by `close()`; `np.load`
    (memory-mapped or not) reads the result like any other `.npy` file.
    """

    def __init__(self, path: str | Path, dtype, row_shape: tuple[int, ...] = ()):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.rows = 0
        self._file = open(self.path, "wb")
        self._file.write(self._header())

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path}: rows of shape {rows.shape[1:]}, expected {self.row_shape}")
        if rows.size:
            self._file.write(memoryview(rows).cast("B"))
        self.rows += len(rows)

    def close(self) -> None:
        self._file.seek(0)
        self._file.write(self._header())
        self._file.close()

    def _header(self) -> bytes:
        meta = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.rows, *self.row_shape)}
        text = repr(meta).encode("latin1")
        body = HEADER_BYTES - len(np.lib.format.MAGIC_PREFIX) - 2 - 2
        if len(text) + 1 > body:
            raise ValueError(f"{self.path}: .npy header too long")
        return np.lib.format.magic(1, 0) + (body).to_bytes(2, "little") + text.ljust(body - 1) + b"\n"


def rank_within(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., c-1 for each group of size c in `counts`, concatenated: [2, 3] -> [0, 1, 0, 1, 2]."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    group_start = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total, dtype=np.int64) - group_start


def ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The integers [s, s + c) for each (s, c), concatenated: starts [5, 0], counts [2, 3] -> [5, 6, 0, 1, 2]."""
    return np.repeat(np.asarray(starts, dtype=np.int64), counts) + rank_within(counts)
