"""split: train/val by a stable content hash, independent of everything but the document."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import SplitConfig
from pipeline.docs import DocTable, DocWriter
from pipeline.errors import PipelineError
from pipeline.io import read_json
from pipeline.sources import doc_id
from pipeline.split import is_val, split_documents


def texts(prefix: str, n: int) -> list[str]:
    return [f"{prefix} document number {i}" for i in range(n)]


def write_table(path, rows: list[tuple[str, str]]) -> DocTable:
    """rows: (text, source); tokens are the text's bytes so each doc's content is checkable."""
    with DocWriter(path, np.uint16) as writer:
        for text, source in rows:
            writer.write(doc_id(text), source, np.frombuffer(text.encode(), dtype=np.uint8).astype(np.uint16))
    return DocTable(path)


def read_split(out_dir) -> dict[str, dict[str, str]]:
    """split -> {doc_id: text}"""
    result = {}
    for split in ("train", "val"):
        table = DocTable(out_dir / f"{split}.arrow")
        result[split] = {i: bytes(table.tokens(k).astype(np.uint8)).decode() for k, i in enumerate(table.doc_ids)}
    return result


def split_of(out_dir) -> dict[str, str]:
    parts = read_split(out_dir)
    return {i: split for split, docs in parts.items() for i in docs}


def test_is_val_deterministic_and_threshold():
    ids = [doc_id(t) for t in texts("x", 200)]
    assert [is_val(i, 0.3) for i in ids] == [is_val(i, 0.3) for i in ids]
    assert is_val("0" * 32, 1e-9)
    assert not is_val("f" * 32, 0.999)
    assert not is_val("0" * 32, 0.0)
    assert is_val("7ffffffffff00000" + "0" * 16, 0.5) and not is_val("8000000000000000" + "0" * 16, 0.5)
    # monotone in the fraction: a val document stays val when the fraction grows
    for i in ids:
        if is_val(i, 0.2):
            assert is_val(i, 0.4)


def test_every_doc_in_exactly_one_split_and_duplicates_together(tmp_path):
    base = texts("alpha", 300)
    rows = [(t, "a") for t in base] + [(t, "a") for t in base[:40]]  # 40 exact duplicates
    table = write_table(tmp_path / "a.arrow", rows)
    counts = split_documents(table, SplitConfig(val_fraction=0.3), tmp_path / "out", "a")
    parts = read_split(tmp_path / "out")
    train_tab, val_tab = DocTable(tmp_path / "out" / "train.arrow"), DocTable(tmp_path / "out" / "val.arrow")
    assert len(train_tab) + len(val_tab) == len(rows)
    assert counts["train"]["docs"] == len(train_tab) and counts["val"]["docs"] == len(val_tab)
    assert counts["train"]["tokens"] == int(train_tab.lengths.sum())
    assert not set(parts["train"]) & set(parts["val"])  # identical docs never straddle
    assert set(parts["train"]) | set(parts["val"]) == {doc_id(t) for t in base}
    for split, docs in parts.items():  # contents follow their id, and the split matches is_val
        for identifier, text in docs.items():
            assert doc_id(text) == identifier
            assert is_val(identifier, 0.3) == (split == "val")
    assert sorted(train_tab.doc_ids + val_tab.doc_ids) == sorted(doc_id(t) for t, _ in rows)
    manifest = read_json(tmp_path / "out" / "manifest.json")
    assert manifest["val_fraction"] == 0.3 and manifest["train"] == counts["train"]


def test_split_stable_when_other_documents_and_sources_change(tmp_path):
    cfg = SplitConfig(val_fraction=0.25)
    a, b = texts("alpha", 200), texts("beta", 150)
    split_documents(write_table(tmp_path / "1.arrow", [(t, "a") for t in a]), cfg, tmp_path / "o1", "a")
    alone = split_of(tmp_path / "o1")
    # other docs added, some removed, order shuffled, another source mixed in, the source renamed
    rng = np.random.default_rng(0)
    rows = [(t, "renamed") for t in a[50:]] + [(t, "b") for t in b]
    rows = [rows[k] for k in rng.permutation(len(rows))]
    split_documents(write_table(tmp_path / "2.arrow", rows), cfg, tmp_path / "o2", "mixed")
    together = split_of(tmp_path / "o2")
    for t in a[50:]:
        assert together[doc_id(t)] == alone[doc_id(t)]
    assert "val" in alone.values() and "train" in alone.values()


def test_split_ignores_mixture_weights_and_seed(tmp_path):
    """split_documents takes only the split config; params outside it cannot move a document."""
    import inspect

    assert list(inspect.signature(split_documents).parameters) == ["docs", "cfg", "out_dir", "name"]
    assert list(inspect.signature(is_val).parameters) == ["doc_id", "val_fraction"]


def test_val_fraction_zero_means_no_val(tmp_path):
    table = write_table(tmp_path / "a.arrow", [(t, "a") for t in texts("z", 100)])
    counts = split_documents(table, SplitConfig(val_fraction=0.0), tmp_path / "out", "a")
    assert counts["val"]["docs"] == 0 and counts["train"]["docs"] == 100
    assert len(DocTable(tmp_path / "out" / "val.arrow")) == 0


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.5])
def test_fraction_roughly_respected(fraction):
    ids = [doc_id(t) for t in texts("many", 20000)]
    share = np.mean([is_val(i, fraction) for i in ids])
    sd = (fraction * (1 - fraction) / len(ids)) ** 0.5
    assert abs(share - fraction) < 5 * sd


def test_error_when_every_doc_lands_in_val(tmp_path):
    with DocWriter(tmp_path / "a.arrow", np.uint16) as writer:
        for k in range(5):
            writer.write(f"{k:016x}" + "0" * 16, "a", np.arange(3))  # tiny hashes: all below 0.5
    out = tmp_path / "out"
    with pytest.raises(PipelineError, match=r"sources\.a: every document landed in val"):
        split_documents(DocTable(tmp_path / "a.arrow"), SplitConfig(val_fraction=0.5), out, "a")
    assert not out.exists()  # nothing half-written left behind
    assert not list(tmp_path.glob(".out.tmp-*"))
