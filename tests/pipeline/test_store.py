"""The token store (sharded, memory-mapped) and the numpy helpers of the index stages."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.arrays import NpyWriter, rank_within, ranges
from pipeline.errors import PipelineError
from pipeline.store import TokenStore, token_dtype
from tests.helpers import write_store


def random_docs(n: int, high: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, high, size=int(rng.integers(0, 30)) if i % 5 else 0) for i in range(n)]  # some empty


@pytest.mark.parametrize("dtype, high", [(np.uint16, 65536), (np.uint32, 200_000)])
@pytest.mark.parametrize("shard_tokens", [None, 40])
def test_round_trip(tmp_path, dtype, high, shard_tokens):
    docs = random_docs(60, high)
    store = write_store(tmp_path / "s", docs, dtype=dtype, shard_tokens=shard_tokens)
    assert len(store) == 60 and store.dtype == np.dtype(dtype)
    assert store.lengths.tolist() == [len(d) for d in docs]
    assert all(store.document(i).tolist() == d.tolist() for i, d in enumerate(docs))
    everything = np.concatenate(docs)
    positions = np.random.default_rng(1).integers(0, len(everything), size=500)
    assert store.take(positions).tolist() == everything[positions].tolist()
    assert store.hashes.shape == (60, 16) and store.offsets[0] == 0
    if shard_tokens:
        shards = store.manifest["shards"]
        assert len(shards) > 1 and all(s["tokens"] <= 40 + 7 * 30 for s in shards)
        assert sum(s["tokens"] for s in shards) == len(everything)
        assert len(list((tmp_path / "s").glob("tokens-*.bin"))) == len(shards)


def test_documents_never_span_shards(tmp_path):
    docs = [np.arange(10)] * 9
    store = write_store(tmp_path / "s", docs, shard_tokens=25, batch=2)  # 20 tokens per batch
    starts = np.cumsum([0] + [s["tokens"] for s in store.manifest["shards"]])
    assert set(starts[1:-1]) <= set(store.offsets.tolist())


def test_empty_store_and_missing_folder(tmp_path):
    store = write_store(tmp_path / "s", [])
    assert len(store) == 0 and store.lengths.tolist() == []
    with pytest.raises(PipelineError, match="no token store"):
        TokenStore(tmp_path / "nowhere")


def test_token_dtype():
    assert token_dtype(50257) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_npy_writer_appends_without_knowing_the_count(tmp_path):
    writer = NpyWriter(tmp_path / "a.npy", np.int64)
    for part in (np.arange(3), np.zeros(0, np.int64), np.arange(10, 15)):
        writer.append(part)
    writer.close()
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2, 10, 11, 12, 13, 14]
    rows = NpyWriter(tmp_path / "b.npy", np.uint8, (16,))
    rows.append(np.ones((2, 16)))
    rows.close()
    assert np.load(tmp_path / "b.npy", mmap_mode="r").shape == (2, 16)
    with pytest.raises(ValueError, match="rows of shape"):
        NpyWriter(tmp_path / "c.npy", np.uint8, (16,)).append(np.ones((2, 8)))


def test_ranges_and_rank_within():
    assert ranges([5, 0, 9], [2, 3, 0]).tolist() == [5, 6, 0, 1, 2]
    assert rank_within([2, 0, 3]).tolist() == [0, 1, 0, 1, 2]
    assert ranges([], []).tolist() == []
