"""Helpers the tests share: tiny vocab folders, token stores and a reference block materialiser."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from pipeline.io import write_json
from pipeline.paths import MANIFEST_FILE
from pipeline.hashing import HASH_BYTES
from pipeline.store import StoreWriter, TokenStore

REPO = Path(__file__).resolve().parents[1]


def write_char_vocab(path: Path, chars: str) -> Path:
    """A `char` tokenizer folder for the given characters."""
    path.mkdir(parents=True, exist_ok=True)
    size = len(set(chars)) + 2
    (path / "chars.json").write_text(json.dumps({"chars": "".join(sorted(set(chars)))}))
    spec = {"kind": "char", "name": "char", "vocab_size": size, "eos_id": 0, "pad_id": 0}
    (path / "spec.json").write_text(json.dumps(spec))
    return path


def text_hash(text: str) -> bytes:
    """The content hash the tokenize stage gives a document."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=HASH_BYTES).digest()


def write_store(folder: Path, docs: list, hashes: list[bytes] | None = None, dtype=np.uint16,
                shard_tokens: int | None = None, batch: int = 7) -> TokenStore:
    """A token store holding `docs` (arrays of ids), written in batches of `batch` documents."""
    folder.mkdir(parents=True)
    hashes = hashes if hashes is not None else [i.to_bytes(HASH_BYTES, "big") for i in range(len(docs))]
    writer = StoreWriter(folder, dtype, **({"shard_tokens": shard_tokens} if shard_tokens else {}))
    for at in range(0, len(docs), batch):
        part = [np.asarray(d, dtype=dtype) for d in docs[at : at + batch]]
        writer.append(np.concatenate(part) if part else np.zeros(0, dtype), np.array([len(d) for d in part], dtype=np.int64),
                      np.frombuffer(b"".join(hashes[at : at + batch]), dtype=np.uint8).reshape(-1, HASH_BYTES))
    write_json(folder / MANIFEST_FILE, {**writer.close(), "tokenizer": "test", "vocab_size": 1000})
    return TokenStore(folder)


def materialise(docs: list, plan: list[list[tuple[int, int, int]]], width: int, eos_id: int, pad_id: int):
    """Reference blocks: each planned piece (doc, start, length) of `docs[doc] + [EOS]` copied in
    place, row by row, as the first version of `pack` wrote them to disk. Returns (tokens, segments)."""
    tokens = np.full((len(plan), width), pad_id, dtype=np.int64)
    segments = np.zeros((len(plan), width), dtype=np.int64)
    for b, pieces in enumerate(plan):
        at = 0
        for s, (doc, start, length) in enumerate(pieces, 1):
            full = np.append(np.asarray(docs[doc], dtype=np.int64), eos_id)
            tokens[b, at : at + length] = full[start : start + length]
            segments[b, at : at + length] = s
            at += length
    return tokens, segments
