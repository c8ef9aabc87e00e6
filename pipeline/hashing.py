"""Documents' content identity, and the train/val decision it makes.

A document's identity is blake2b-128 of its UTF-8 text: identical texts get identical hashes. The
split reads the first 8 bytes of it as a big-endian fraction of 2**64: below `val_fraction` is val.
"""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction
from typing import Sequence

import numpy as np

HASH_BYTES = 16


def content_hashes(texts: Sequence[str]) -> tuple[np.ndarray, int]:
    """(len(texts), 16) uint8 hashes of the texts, and their total UTF-8 size in bytes."""
    raw = [text.encode("utf-8", "surrogatepass") for text in texts]
    digests = b"".join([hashlib.blake2b(data, digest_size=HASH_BYTES).digest() for data in raw])
    return np.frombuffer(digests, dtype=np.uint8).reshape(-1, HASH_BYTES), sum(map(len, raw))


def val_threshold(val_fraction: float) -> int:
    """The integer t with: hash key < val_fraction * 2**64  <=>  key < t (exact, no float rounding)."""
    return math.ceil(Fraction(val_fraction) * 2**64)


def is_val(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """(n, 16) uint8 content hashes -> (n,) bool: which documents belong to val."""
    keys = np.ascontiguousarray(hashes[:, :8]).view(">u8").ravel()
    return keys < np.uint64(threshold)
