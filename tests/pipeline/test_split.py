"""split: train/val by a stable content hash, independent of everything but the document."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from pipeline.config import SplitConfig
from pipeline.errors import PipelineError
from pipeline.io import read_json
from pipeline.hashing import is_val, val_threshold
from pipeline.split import split_store
from tests.helpers import text_hash, write_store


def texts(prefix: str, n: int) -> list[str]:
    return [f"{prefix} document number {i}" for i in range(n)]


def store_of(path, rows: list[str]):
    """A store whose documents are the texts' bytes (so contents are checkable), hashed like tokenize does."""
    docs = [np.frombuffer(t.encode(), dtype=np.uint8).astype(np.uint16) for t in rows]
    return write_store(path, docs, hashes=[text_hash(t) for t in rows])


def split_of(store, out_dir) -> dict[str, str]:
    """text -> split"""
    result = {}
    for split in ("train", "val"):
        for i in np.load(out_dir / f"{split}.npy"):
            result[bytes(store.document(i).astype(np.uint8)).decode()] = split
    return result


def hashes_of(keys: list[int]) -> np.ndarray:
    return np.array([list(k.to_bytes(8, "big")) + [0] * 8 for k in keys], dtype=np.uint8)


def test_is_val_deterministic_and_exact_threshold():
    h = np.array([list(text_hash(t)) for t in texts("x", 200)], dtype=np.uint8)
    assert np.array_equal(is_val(h, val_threshold(0.3)), is_val(h, val_threshold(0.3)))
    assert is_val(hashes_of([0]), val_threshold(1e-9))[0]
    assert not is_val(hashes_of([2**64 - 1]), val_threshold(0.999))[0]
    assert not is_val(hashes_of([0]), val_threshold(0.0))[0]
    assert is_val(hashes_of([0x7FFFFFFFFFF00000]), val_threshold(0.5))[0]
    assert not is_val(hashes_of([0x8000000000000000]), val_threshold(0.5))[0]
    for f in (0.1, 0.3, 1e-9, 0.5):  # the integer threshold agrees with Python's exact int < float compare
        t = val_threshold(f)
        for key in (t - 1, t):
            assert is_val(hashes_of([key]), t)[0] == (key < f * 2.0**64)
    assert np.all(is_val(h, val_threshold(0.4))[is_val(h, val_threshold(0.2))])  # monotone in the fraction


def test_every_doc_in_exactly_one_split_and_duplicates_together(tmp_path):
    base = texts("alpha", 300)
    rows = base + base[:40]  # 40 exact duplicates
    store = store_of(tmp_path / "a", rows)
    counts = split_store(store, SplitConfig(val_fraction=0.3), tmp_path / "out", "a")
    train, val = np.load(tmp_path / "out/train.npy"), np.load(tmp_path / "out/val.npy")
    assert sorted(train.tolist() + val.tolist()) == list(range(len(rows)))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert counts["train"]["docs"] == len(train) and counts["val"]["docs"] == len(val)
    assert counts["train"]["tokens"] == int(store.lengths[train].sum())
    splits = split_of(store, tmp_path / "out")
    for text in base:  # a duplicate lands with its twin (the dict would show a conflict otherwise)
        expected = "val" if is_val(np.frombuffer(text_hash(text), np.uint8)[None], val_threshold(0.3))[0] else "train"
        assert splits[text] == expected
    for i in range(40):
        assert (i in val) == (300 + i in val)
    manifest = read_json(tmp_path / "out" / "manifest.json")
    assert manifest["val_fraction"] == 0.3 and manifest["train"] == counts["train"] and "store" in manifest["inputs"]


def test_split_stable_when_other_documents_and_sources_change(tmp_path):
    cfg = SplitConfig(val_fraction=0.25)
    a, b = texts("alpha", 200), texts("beta", 150)
    alone_store = store_of(tmp_path / "1", a)
    split_store(alone_store, cfg, tmp_path / "o1", "a")
    alone = split_of(alone_store, tmp_path / "o1")
    rng = np.random.default_rng(0)
    rows = a[50:] + b
    rows = [rows[k] for k in rng.permutation(len(rows))]  # docs added, removed, shuffled, another source mixed in
    mixed_store = store_of(tmp_path / "2", rows)
    split_store(mixed_store, cfg, tmp_path / "o2", "mixed")
    together = split_of(mixed_store, tmp_path / "o2")
    assert all(together[t] == alone[t] for t in a[50:])
    assert {"val", "train"} == set(alone.values())


def test_split_reads_nothing_but_its_own_config_and_the_dedup_groups():
    assert list(inspect.signature(split_store).parameters) == ["store", "cfg", "out_dir", "name", "groups"]


def test_val_fraction_zero_means_no_val(tmp_path):
    counts = split_store(store_of(tmp_path / "a", texts("z", 100)), SplitConfig(val_fraction=0.0), tmp_path / "out", "a")
    assert counts["val"]["docs"] == 0 and counts["train"]["docs"] == 100
    assert len(np.load(tmp_path / "out/val.npy")) == 0


def test_chunks_give_the_same_split(tmp_path, monkeypatch):
    store = store_of(tmp_path / "a", texts("c", 500))
    split_store(store, SplitConfig(val_fraction=0.2), tmp_path / "whole", "a")
    monkeypatch.setattr("pipeline.split.CHUNK_DOCS", 7)
    split_store(store, SplitConfig(val_fraction=0.2), tmp_path / "chunked", "a")
    for name in ("train.npy", "val.npy", "manifest.json"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "chunked" / name).read_bytes()


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.5])
def test_fraction_roughly_respected(fraction):
    h = np.array([list(text_hash(t)) for t in texts("many", 20000)], dtype=np.uint8)
    share = is_val(h, val_threshold(fraction)).mean()
    sd = (fraction * (1 - fraction) / len(h)) ** 0.5
    assert abs(share - fraction) < 5 * sd


def test_error_when_every_doc_lands_in_val(tmp_path):
    store = write_store(tmp_path / "a", [np.arange(3)] * 5, hashes=[bytes(hashes_of([k])[0]) for k in range(5)])
    out = tmp_path / "out"
    with pytest.raises(PipelineError, match=r"sources\.a: every document landed in val"):
        split_store(store, SplitConfig(val_fraction=0.5), out, "a")
    assert not out.exists()  # nothing half-written left behind
    assert not list(tmp_path.glob(".out.tmp-*"))
