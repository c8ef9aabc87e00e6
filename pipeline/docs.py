"""Tokenized documents on disk: an Arrow IPC file with columns doc_id, source, tokens.

`DocWriter` streams documents out in record batches (memory stays bounded); `DocTable` opens a
file memory-mapped and hands out each document's token ids as a zero-copy numpy view.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from pipeline.errors import PipelineError

BATCH_DOCS = 4096  # a record batch holds at most this many documents
BATCH_TOKENS = 1 << 22  # ... or about this many tokens, so memory stays bounded whatever the document size
ARROW_TO_NUMPY = {pa.uint16(): np.uint16, pa.uint32(): np.uint32}


def doc_schema(dtype: np.dtype) -> pa.Schema:
    return pa.schema(
        [
            ("doc_id", pa.string()),  # hex content hash of the document's text
            ("source", pa.string()),
            ("tokens", pa.list_(pa.from_numpy_dtype(dtype))),
        ]
    )


class DocWriter:
    """Append (doc_id, source, tokens) rows to an Arrow IPC file, one record batch per BATCH_DOCS."""

    def __init__(self, path: str | Path, dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        self.schema = doc_schema(self.dtype)
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, self.schema)
        self._pending: list[tuple[str, str, np.ndarray]] = []
        self._pending_tokens = 0
        self.docs = 0
        self.tokens = 0

    def write(self, doc_id: str, source: str, tokens: np.ndarray) -> None:
        self._pending.append((doc_id, source, tokens))
        self._pending_tokens += len(tokens)
        self.docs += 1
        self.tokens += len(tokens)
        if len(self._pending) >= BATCH_DOCS or self._pending_tokens >= BATCH_TOKENS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        ids, sources, seqs = zip(*self._pending)
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        offsets = np.zeros(len(seqs) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = np.concatenate(seqs).astype(self.dtype, copy=False)
        tokens = pa.ListArray.from_arrays(_numeric(offsets), _numeric(values))
        batch = pa.record_batch([_strings(ids), _strings(sources), tokens], self.schema)
        self._writer.write_batch(batch)
        self._pending.clear()
        self._pending_tokens = 0

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self._sink.close()

    def __enter__(self) -> "DocWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self._writer.close()
            self._sink.close()


def _numeric(values: np.ndarray) -> pa.Array:
    """A numpy array as an Arrow array, zero-copy (pa.array would import pandas: slow to start)."""
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def _strings(texts: tuple[str, ...]) -> pa.Array:
    data = [t.encode() for t in texts]
    offsets = np.zeros(len(data) + 1, dtype=np.int32)
    np.cumsum([len(d) for d in data], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])


class DocTable:
    """A memory-mapped documents file: `len()`, `tokens(i)`, `lengths`, `doc_ids`, `sources`."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise PipelineError(f"{path}: not found")
        self.path = path
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        self.dtype = np.dtype(ARROW_TO_NUMPY[reader.schema.field("tokens").type.value_type])
        self._values: list[np.ndarray] = []
        self._offsets: list[np.ndarray] = []
        ids, sources = [], []
        for b in range(reader.num_record_batches):
            batch = reader.get_batch(b)
            column = batch.column("tokens")
            self._values.append(column.values.to_numpy(zero_copy_only=True))
            self._offsets.append(column.offsets.to_numpy())
            ids.append(batch.column("doc_id"))
            sources.append(batch.column("source"))
        sizes = [len(o) - 1 for o in self._offsets]
        self._batch_of = np.repeat(np.arange(len(sizes)), sizes)
        self._row_in_batch = np.concatenate([np.arange(n) for n in sizes]) if sizes else np.zeros(0, int)
        self.lengths = (
            np.concatenate([np.diff(o) for o in self._offsets]).astype(np.int64) if sizes else np.zeros(0, np.int64)
        )
        self._ids = pa.chunked_array(ids, pa.string())
        self._sources = pa.chunked_array(sources, pa.string())

    def __len__(self) -> int:
        return len(self.lengths)

    def tokens(self, i: int) -> np.ndarray:
        b, r = self._batch_of[i], self._row_in_batch[i]
        start, end = self._offsets[b][r], self._offsets[b][r + 1]
        return self._values[b][start:end]

    @property
    def doc_ids(self) -> list[str]:
        return self._ids.to_pylist()

    @property
    def sources(self) -> list[str]:
        return self._sources.to_pylist()

    def __iter__(self) -> Iterator[np.ndarray]:
        for values, offsets in zip(self._values, self._offsets):
            for r in range(len(offsets) - 1):
                yield values[offsets[r] : offsets[r + 1]]
