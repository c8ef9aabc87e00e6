"""dedup: exact and near-duplicate groups over the token stores; what the split does with them."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.config import DedupConfig, NearDedupConfig, SplitConfig
from pipeline.errors import ConfigError
from pipeline.typed import from_dict
from pipeline.dedup import Clusters, Corpus, band_keys, cluster_texts, dedup, shingles
from pipeline.errors import PipelineError
from pipeline.io import read_json
from pipeline.split import split_store
from pipeline.tokenizer import load_tokenizer
from tests.helpers import planted_corpus, shingle_jaccard, text_hash, write_char_vocab, write_store


def caught(j: float, cfg: NearDedupConfig) -> float:
    return 1 - (1 - j**cfg.rows) ** cfg.bands


DEFAULT = NearDedupConfig()
DATATROVE = NearDedupConfig(ngram=5, num_perm=112, bands=14, rows=8)  # FineWeb's setting


@pytest.mark.parametrize("change", [0.05, 0.10, 0.20])
@pytest.mark.parametrize("cfg", [DEFAULT, DATATROVE], ids=["default", "14x8-5gram"])
def test_recall_of_planted_pairs_follows_the_s_curve(change, cfg):
    texts, pairs = planted_corpus(n_unrelated=150, n_planted=100, change=change)
    roots = cluster_texts(texts, cfg)
    found = np.array([roots[a] == roots[b] for a, b in pairs])
    expected = np.mean([caught(shingle_jaccard(texts[a], texts[b], cfg.ngram), cfg) for a, b in pairs])
    assert abs(found.mean() - expected) < 0.1, (found.mean(), expected)
    if cfg is DEFAULT and change <= 0.10:
        assert found.mean() >= 0.95


def test_unrelated_documents_are_not_clustered():
    texts, _ = planted_corpus(n_unrelated=400, n_planted=0, change=0.0, seed=3)
    roots = cluster_texts(texts, DEFAULT)
    together = sum(roots[a] == roots[b] for a, b in itertools.combinations(range(len(texts)), 2))
    assert together / (len(texts) * (len(texts) - 1) / 2) <= 0.001


def test_band_keys_are_deterministic_and_seeded():
    texts, _ = planted_corpus(n_unrelated=5, n_planted=0, change=0.0)
    a, _ = band_keys(texts, DEFAULT)
    assert np.array_equal(a, band_keys(texts, DEFAULT)[0])
    assert not np.array_equal(a, band_keys(texts, NearDedupConfig(seed=2))[0])
    keys, has_words = band_keys(["", "...", "one"], DEFAULT)
    assert has_words.tolist() == [False, False, True] and not keys[:2].any()


def test_shingles():
    assert shingles("The cat, the CAT sat.", 2) == ["the cat", "cat the", "the cat", "cat sat"]
    assert shingles("Just two", 3) == ["just two"] and shingles("!?", 3) == []


def test_clusters_root_is_the_smallest_member():
    clusters = Clusters(6)
    for a, b in [(4, 5), (5, 2), (1, 3)]:
        clusters.union(a, b)
    assert clusters.roots().tolist() == [0, 1, 2, 1, 2, 2]


@pytest.mark.parametrize(
    "near, message",
    [({"num_perm": 100}, "dedup.near.num_perm must equal bands x rows"), ({"ngram": 0}, "dedup.near.ngram"), ({"bands": 0}, "dedup.near.bands")],
)
def test_bad_params_name_the_key(near, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(DedupConfig, {"near": near}, "dedup")
    with pytest.raises(ConfigError, match="dedup.scope"):
        from_dict(DedupConfig, {"scope": "everything"}, "dedup")


# The stage over token stores.

PLANTED, PAIRS = planted_corpus(n_unrelated=120, n_planted=60, change=0.05, seed=5)


def make_corpus(tmp_path, first: list[str], second: list[str]) -> tuple[Corpus, object]:
    vocab = write_char_vocab(tmp_path / "vocab", "".join(first + second))
    tokenizer = load_tokenizer(vocab)
    stores = [write_store(tmp_path / name, [tokenizer.encode(t) for t in texts], hashes=[text_hash(t) for t in texts])
              for name, texts in (("web", first), ("books", second))]
    return Corpus(["web", "books"], stores), vocab


def run(tmp_path, corpus, vocab, workers=1, name="out", **cfg):
    near = cfg.pop("near", {})
    config = from_dict(DedupConfig, {**cfg, "near": near}, "dedup")
    metrics, report = dedup(corpus, config, vocab, tmp_path / name, workers)
    keep = [np.load(tmp_path / name / s / "keep.npy") for s in corpus.names]
    return metrics, report, keep


def test_exact_copies_across_sources_keep_the_first_source(tmp_path):
    shared = PLANTED[:10]
    corpus, vocab = make_corpus(tmp_path, PLANTED[10:40] + shared, shared + PLANTED[40:50] + shared[:3])
    metrics, _, keep = run(tmp_path, corpus, vocab, near={"enabled": False})
    assert keep[0].all(), "web comes first in source order: its copies stay"
    assert keep[1].tolist() == [False] * 10 + [True] * 10 + [False] * 3
    books = metrics["sources"]["books"]
    assert books["exact_removed_docs"] == 13 and books["exact_kept_in"] == {"web": 13}
    assert books["exact_removed_tokens"] == sum(len(t) for t in shared) + sum(len(t) for t in shared[:3])
    assert books["kept_docs"] == 10 and metrics["sources"]["web"]["exact_removed_docs"] == 0
    _, _, per_source = run(tmp_path, corpus, vocab, name="per-source", scope="source", near={"enabled": False})
    assert per_source[1].sum() == 20, "scope: source keeps one copy per source (the repeat of 3 inside books goes)"


def test_near_copies_are_removed_and_reported(tmp_path):
    corpus, vocab = make_corpus(tmp_path, PLANTED[:150], PLANTED[150:])
    metrics, report, keep = run(tmp_path, corpus, vocab)
    kept = np.concatenate(keep)
    removed_copies = sum(not kept[b] for _, b in PAIRS)
    assert removed_copies >= 0.95 * len(PAIRS) and kept[: len(PLANTED) - len(PAIRS)].all()
    total = metrics["sources"]["web"]["near_removed_docs"] + metrics["sources"]["books"]["near_removed_docs"]
    assert total == removed_copies and metrics["sources"]["web"]["near_clusters"] == removed_copies
    assert "## The 10 largest groups" in report and PLANTED[0][:50] in report


def test_same_output_for_any_number_of_workers(tmp_path):
    corpus, vocab = make_corpus(tmp_path, PLANTED[:100], PLANTED[100:])
    one = run(tmp_path, corpus, vocab, workers=1, name="one")
    two = run(tmp_path, corpus, vocab, workers=2, name="two")
    assert one[0] == two[0] and one[1] == two[1]
    for name in ("keep.npy", "split_hashes.npy"):
        for source in corpus.names:
            assert (tmp_path / "one" / source / name).read_bytes() == (tmp_path / "two" / source / name).read_bytes()


def leaked_pairs(tmp_path, corpus, groups_dir) -> int:
    """Planted pairs with one document in val and the other in train."""
    where = {}
    for s, name in enumerate(corpus.names):
        out = tmp_path / f"split-{groups_dir}-{name}"
        groups = None if groups_dir is None else tmp_path / groups_dir / name
        split_store(corpus.stores[s], SplitConfig(val_fraction=0.3), out, name, groups=groups)
        for split in ("train", "val"):
            for i in np.load(out / f"{split}.npy"):
                where[int(corpus.starts[s]) + int(i)] = split
    return sum(a in where and b in where and where[a] != where[b] for a, b in PAIRS)


def test_clusters_stay_in_one_split_even_without_removal(tmp_path):
    corpus, vocab = make_corpus(tmp_path, PLANTED[:150], PLANTED[150:])
    assert leaked_pairs(tmp_path, corpus, None) >= 10, "by content hash alone, copies land apart"
    _, _, keep = run(tmp_path, corpus, vocab, name="groups", near={"remove": False})
    assert all(k.all() for k in keep), "remove: false keeps every document"
    assert leaked_pairs(tmp_path, corpus, "groups") == 0
    assert read_json(tmp_path / "groups" / "manifest.json")["dedup"]["near"]["remove"] is False


def test_split_refuses_groups_of_another_store(tmp_path):
    corpus, vocab = make_corpus(tmp_path, PLANTED[:20], PLANTED[20:30])
    run(tmp_path, corpus, vocab)
    with pytest.raises(Exception, match="another token store"):
        split_store(corpus.stores[0], SplitConfig(val_fraction=0.3), tmp_path / "s", "web", groups=tmp_path / "out" / "books")


def test_split_names_a_source_that_dedup_emptied_or_never_saw(tmp_path):
    corpus, vocab = make_corpus(tmp_path, PLANTED[:20], PLANTED[:20])  # books is a copy of web
    run(tmp_path, corpus, vocab, near={"enabled": False})
    with pytest.raises(PipelineError, match="sources.books: dedup removed every document"):
        split_store(corpus.stores[1], SplitConfig(val_fraction=0.3), tmp_path / "s", "books", groups=tmp_path / "out" / "books")
    with pytest.raises(PipelineError, match="no dedup output for this source"):
        split_store(corpus.stores[1], SplitConfig(val_fraction=0.3), tmp_path / "s", "books", groups=tmp_path / "nowhere" / "books")
