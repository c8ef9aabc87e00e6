"""DocWriter / DocTable: Arrow round trip of (doc_id, source, tokens)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import pipeline.docs
from pipeline.docs import DocTable, DocWriter
from pipeline.errors import PipelineError


def make_docs(n: int, high: int, seed: int = 0) -> list[tuple[str, str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        length = int(rng.integers(0, 20)) if i % 5 else 0  # some empty documents too
        docs.append((f"{i:032x}", "ab"[i % 2], rng.integers(0, high, size=length)))
    return docs


def write(path, docs, dtype):
    with DocWriter(path, dtype) as writer:
        for identifier, source, tokens in docs:
            writer.write(identifier, source, tokens)
    return writer


def check_round_trip(table: DocTable, docs, dtype) -> None:
    assert len(table) == len(docs)
    assert table.doc_ids == [d[0] for d in docs]
    assert table.sources == [d[1] for d in docs]
    assert table.lengths.tolist() == [len(d[2]) for d in docs]
    assert np.dtype(table.dtype) == np.dtype(dtype)
    for i, (_, _, tokens) in enumerate(docs):
        got = table.tokens(i)
        assert got.dtype == np.dtype(dtype)
        assert got.tolist() == tokens.tolist()
    assert [t.tolist() for t in table] == [d[2].tolist() for d in docs]


@pytest.mark.parametrize("dtype,high", [(np.uint16, 1 << 16), (np.uint32, 1 << 32)])
def test_round_trip(tmp_path, dtype, high):
    docs = make_docs(23, high)
    docs[3] = (docs[3][0], docs[3][1], np.array([high - 1, 0, 1], dtype=np.int64))  # the largest id survives
    writer = write(tmp_path / "d.arrow", docs, dtype)
    assert writer.docs == 23
    assert writer.tokens == sum(len(d[2]) for d in docs)
    table = DocTable(tmp_path / "d.arrow")
    check_round_trip(table, docs, dtype)
    schema = pa.ipc.open_file(str(tmp_path / "d.arrow")).schema
    assert schema.field("tokens").type.value_type == pa.from_numpy_dtype(np.dtype(dtype))


def test_many_record_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.docs, "BATCH_DOCS", 4)
    docs = make_docs(18, 1 << 16, seed=1)  # 4 full batches + a partial one
    write(tmp_path / "d.arrow", docs, np.uint16)
    assert pa.ipc.open_file(str(tmp_path / "d.arrow")).num_record_batches == 5
    check_round_trip(DocTable(tmp_path / "d.arrow"), docs, np.uint16)


def test_tokens_are_zero_copy_views(tmp_path):
    docs = make_docs(6, 100)
    write(tmp_path / "d.arrow", docs, np.uint16)
    table = DocTable(tmp_path / "d.arrow")
    view = table.tokens(1)
    assert not view.flags.owndata
    assert not view.flags.writeable


def test_empty_file(tmp_path):
    writer = write(tmp_path / "e.arrow", [], np.uint32)
    assert (writer.docs, writer.tokens) == (0, 0)
    table = DocTable(tmp_path / "e.arrow")
    assert len(table) == 0
    assert table.doc_ids == [] and table.sources == []
    assert table.lengths.shape == (0,)
    assert list(table) == []
    assert np.dtype(table.dtype) == np.uint32


def test_missing_file(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        DocTable(tmp_path / "nope.arrow")
