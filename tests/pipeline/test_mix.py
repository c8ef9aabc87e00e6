"""mix: token-weighted, deterministic selection of documents per source."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from pipeline.config import MixConfig
from pipeline.io import read_json
from pipeline.mix import MIX_COLUMNS, Selection, interleave, plan_mixture, select_tokens, source_rng, write_mixture

BUDGET = 100_000


def source_lengths() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "big": rng.integers(50, 300, size=2000),  # ~350k tokens: down-sampled
        "mid": rng.integers(20, 120, size=300),  # ~21k tokens: 1.x epochs
        "small": rng.integers(5, 30, size=40),  # ~800 tokens: ~25 epochs
    }


WEIGHTS = {"big": 0.5, "mid": 0.3, "small": 0.2}


def cost(selection: Selection) -> int:
    return int((selection.keep + 1).sum())


def check_selection(lengths: np.ndarray, selection: Selection) -> None:
    """Whole epochs + a sample without replacement; only one document (the last sampled) may be cut."""
    total = int((lengths + 1).sum())
    epochs = cost(selection) // total
    counts = np.bincount(selection.rows, minlength=len(lengths))
    assert counts.min() >= epochs and counts.max() <= epochs + 1
    assert np.all(selection.keep <= lengths[selection.rows])
    assert np.all(selection.keep >= 0)
    assert np.count_nonzero(selection.keep < lengths[selection.rows]) <= 1


def test_shares_within_one_percent_of_requested():
    lengths = source_lengths()
    cfg = MixConfig(weights=WEIGHTS, train_tokens=BUDGET)
    selections, report = plan_mixture(lengths, cfg, seed=1337)
    assert set(selections) == set(WEIGHTS)
    total = sum(cost(s) for s in selections.values())
    for name, weight in WEIGHTS.items():
        check_selection(lengths[name], selections[name])
        assert abs(cost(selections[name]) / total - weight) < 0.01
        row = report["sources"][name]
        assert abs(row["achieved_share"] - row["requested_share"]) < 0.01
    # the regimes the test is meant to cover
    assert report["sources"]["big"]["epochs"] < 1
    assert 1 < report["sources"]["mid"]["epochs"] < 2
    assert report["sources"]["small"]["epochs"] > 10


def test_whole_epochs_contain_every_document_once_per_epoch():
    lengths = np.array([3, 9, 1, 14, 6])
    total = int((lengths + 1).sum())  # 38
    sel = select_tokens(lengths, 3 * total, np.random.default_rng(0))
    assert np.array_equal(np.bincount(sel.rows, minlength=5), [3] * 5)
    assert np.array_equal(np.sort(sel.keep), np.sort(np.tile(lengths, 3)))
    sel = select_tokens(lengths, 3 * total + 12, np.random.default_rng(0))
    counts = np.bincount(sel.rows, minlength=5)
    assert counts.min() == 3 and counts.max() == 4
    check_selection(lengths, sel)
    assert cost(sel) == 3 * total + 12


def test_downsample_is_a_sample_without_repeats():
    lengths = np.full(100, 9)  # cost 10 each
    sel = select_tokens(lengths, 250, np.random.default_rng(3))
    assert cost(sel) == 250
    assert len(np.unique(sel.rows)) == len(sel.rows) == 25
    assert not np.array_equal(np.sort(sel.rows), np.arange(25))  # a random sample, not the first docs


def test_select_tokens_hits_every_target_exactly():
    """'The last sampled document is cut so the source gets exactly its share.'"""
    lengths = np.random.default_rng(0).integers(1, 50, size=60)
    missed = []
    for target in range(1, 4000, 7):
        sel = select_tokens(lengths, target, np.random.default_rng(target))
        check_selection(lengths, sel)
        if cost(sel) != target:
            missed.append((target, cost(sel)))
    assert missed == []


@pytest.mark.parametrize("weights", [WEIGHTS, {"big": 1.0, "mid": 1.0, "small": 1.0}, {"big": 2, "mid": 5, "small": 7}])
def test_exact_token_budget(weights):
    cfg = MixConfig(weights=weights, train_tokens=BUDGET)
    selections, report = plan_mixture(source_lengths(), cfg, seed=5)
    assert sum(cost(s) for s in selections.values()) == report["train_tokens"]
    assert report["train_tokens"] == BUDGET


def test_deterministic_per_seed():
    cfg = MixConfig(weights=WEIGHTS, train_tokens=BUDGET)
    a, ra = plan_mixture(source_lengths(), cfg, seed=1)
    b, rb = plan_mixture(source_lengths(), cfg, seed=1)
    c, _ = plan_mixture(source_lengths(), cfg, seed=2)
    assert ra == rb
    for name in WEIGHTS:
        assert np.array_equal(a[name].rows, b[name].rows) and np.array_equal(a[name].keep, b[name].keep)
    assert not np.array_equal(a["big"].rows, c["big"].rows)
    assert not np.array_equal(a["mid"].rows, c["mid"].rows)


def test_adding_a_source_leaves_the_others_alone():
    lengths = source_lengths()
    two, _ = plan_mixture({n: lengths[n] for n in ("big", "mid")}, MixConfig({"big": 1, "mid": 1}, 100_000), 9)
    three, _ = plan_mixture(lengths, MixConfig({"big": 1, "mid": 1, "small": 1}, 150_000), 9)
    for name in ("big", "mid"):  # same target (50k) -> same documents
        assert np.array_equal(two[name].rows, three[name].rows)
        assert np.array_equal(two[name].keep, three[name].keep)
    assert not np.array_equal(
        select_tokens(lengths["big"], 5000, source_rng(9, "big")).rows,
        select_tokens(lengths["big"], 5000, source_rng(9, "mid")).rows,
    )


def test_zero_weights_excluded():
    cfg = MixConfig(weights={"big": 0.0, "mid": 1.0, "small": 1.0}, train_tokens=20_000)
    selections, report = plan_mixture(source_lengths(), cfg, seed=0)
    assert set(selections) == set(report["sources"]) == {"mid", "small"}
    assert report["sources"]["mid"]["requested_share"] == pytest.approx(0.5)


def test_report_fields():
    lengths = source_lengths()
    cfg = MixConfig(weights={"big": 3, "mid": 1}, train_tokens=40_000)
    selections, report = plan_mixture(lengths, cfg, seed=0)
    assert set(report) == {"sources", "train_tokens"}
    assert report["train_tokens"] == sum(cost(s) for s in selections.values())
    for name, weight in cfg.weights.items():
        row = report["sources"][name]
        assert set(row) == {"weight", "requested_share", "achieved_share", "epochs", "available_tokens", "source_tokens", "tokens", "docs"}
        assert row["weight"] == weight
        assert row["requested_share"] == pytest.approx(weight / 4)
        assert row["available_tokens"] == row["source_tokens"] == int((lengths[name] + 1).sum())
        assert row["tokens"] == cost(selections[name])
        assert row["docs"] == len(selections[name].rows)
        assert row["achieved_share"] == pytest.approx(row["tokens"] / report["train_tokens"])
        assert row["epochs"] == pytest.approx(row["tokens"] / row["available_tokens"], abs=1e-3)


def test_a_data_fraction_repeats_each_source_as_often_as_the_full_budget():
    """A proxy with a quarter of the budget and a quarter of the data: same epochs per source."""
    lengths = source_lengths()
    full, full_report = plan_mixture(lengths, MixConfig(WEIGHTS, BUDGET), seed=3)
    proxy, proxy_report = plan_mixture(lengths, MixConfig(WEIGHTS, BUDGET // 4, data_fraction=0.25), seed=3)
    for name in WEIGHTS:
        row, full_row = proxy_report["sources"][name], full_report["sources"][name]
        assert row["source_tokens"] == full_row["source_tokens"]
        assert row["available_tokens"] == pytest.approx(0.25 * row["source_tokens"], rel=0.1)
        assert row["epochs"] == pytest.approx(full_row["epochs"], rel=0.1), name
        assert len(np.unique(proxy[name].rows)) < 0.4 * len(lengths[name]), "drawn from a subset"
    pool = np.unique(proxy["small"].rows)
    assert np.all(np.bincount(proxy["small"].rows)[pool] >= int(proxy_report["sources"]["small"]["epochs"]))
    again, _ = plan_mixture(lengths, MixConfig(WEIGHTS, BUDGET, data_fraction=1.0), seed=3)
    assert all(np.array_equal(again[n].rows, full[n].rows) for n in WEIGHTS), "a fraction of 1 changes nothing"


def test_interleave_holds_the_selected_documents_exactly(tmp_path):
    lengths = {"a": np.array([5, 8, 3, 12, 7, 9]), "b": np.array([20, 4, 6, 11, 2, 15, 9, 30])}
    docs = {"a": np.arange(6) * 3 + 1, "b": np.arange(8) * 2}  # train documents' indices in their stores
    cfg = MixConfig(weights={"a": 2, "b": 1}, train_tokens=300)  # a: >3 epochs; b: ~0.9 epoch with a cut
    selections, report = plan_mixture(lengths, cfg, seed=4)
    assert np.any(selections["b"].keep < lengths["b"][selections["b"].rows])  # a truncated document is present
    columns = interleave(selections, docs, seed=4)
    names = ["a", "b"]
    rows = list(zip((names[s] for s in columns["source"]), columns["doc"].tolist(), columns["keep"].tolist()))
    expected = Counter()
    for name, sel in selections.items():
        for r, keep in zip(sel.rows, sel.keep):
            expected[(name, int(docs[name][r]), int(keep))] += 1
    assert Counter(rows) == expected
    assert int((columns["keep"] + 1).sum()) == report["train_tokens"]
    sources = [s for s, _, _ in rows]
    assert sources != sorted(sources) and sources != sorted(sources, reverse=True)  # interleaved
    half = sources[: len(sources) // 2]
    assert "a" in half and "b" in half

    write_mixture(columns, names, 4, {"a": "x"}, tmp_path / "mix")
    for name in MIX_COLUMNS:
        assert np.array_equal(np.load(tmp_path / "mix" / f"{name}.npy"), columns[name])
    manifest = read_json(tmp_path / "mix" / "manifest.json")
    assert manifest == {"seed": 4, "sources": names, "docs": len(rows), "tokens": report["train_tokens"], "inputs": {"a": "x"}}


def test_interleave_order_is_seeded():
    lengths = {"a": np.arange(1, 30), "b": np.arange(1, 40)}
    docs = {n: np.arange(len(v)) for n, v in lengths.items()}
    selections, _ = plan_mixture(lengths, MixConfig({"a": 1, "b": 1}, 1000), seed=0)
    r1, r2, r3 = (interleave(selections, docs, seed) for seed in (0, 0, 1))
    rows = [list(zip(*(r[c].tolist() for c in MIX_COLUMNS))) for r in (r1, r2, r3)]
    assert rows[0] == rows[1]
    assert rows[0] != rows[2] and sorted(rows[0]) == sorted(rows[2])
