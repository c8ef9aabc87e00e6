from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from pipeline.config import SourceConfig
from pipeline.docs import DocTable
from pipeline.errors import PipelineError
from pipeline.sources import doc_id
from pipeline.tokenize import MAX_PENDING_PER_WORKER, batched_texts, ordered_parallel_map, tokenize_source
from pipeline.tokenizer import load_tokenizer
from tests.conftest import write_char_vocab


def make_corpus(folder, n=40):
    folder.mkdir()
    texts = [f"document {i}: " + "lorem ipsum " * (i % 7 + 1) for i in range(n)]
    for i, text in enumerate(texts):
        (folder / f"{i:03d}.txt").write_text(text)
    (folder / "blank.txt").write_text("  \n")
    return texts


@pytest.mark.parametrize("workers", [1, 2])
def test_round_trip_and_manifest(tmp_path, gpt2_vocab, workers, monkeypatch):
    monkeypatch.setattr("pipeline.tokenize.BATCH_CHARS", 200)  # many batches through the pool
    texts = make_corpus(tmp_path / "corpus")
    cfg = SourceConfig(format="text", path=str(tmp_path / "corpus"))
    manifest = tokenize_source("t", cfg, gpt2_vocab, tmp_path / "out", workers)
    table = DocTable(tmp_path / "out" / "docs.arrow")
    tok = load_tokenizer(gpt2_vocab)
    assert table.dtype == np.uint16
    assert [tok.decode(table.tokens(i)) for i in range(len(table))] == texts
    assert table.doc_ids == [doc_id(t) for t in texts]
    assert set(table.sources) == {"t"}
    assert manifest["docs"] == len(texts) and manifest["tokens"] == int(table.lengths.sum())
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest


def test_same_output_whatever_the_worker_count(tmp_path, gpt2_vocab, monkeypatch):
    monkeypatch.setattr("pipeline.tokenize.BATCH_CHARS", 100)
    make_corpus(tmp_path / "corpus")
    cfg = SourceConfig(format="text", path=str(tmp_path / "corpus"))
    tokenize_source("t", cfg, gpt2_vocab, tmp_path / "one", 1)
    tokenize_source("t", cfg, gpt2_vocab, tmp_path / "two", 2)
    assert (tmp_path / "one" / "docs.arrow").read_bytes() == (tmp_path / "two" / "docs.arrow").read_bytes()


def test_char_tokenizer_source(tmp_path):
    vocab = write_char_vocab(tmp_path / "vocab", "abc ")
    (tmp_path / "c.txt").write_text("abc cab\n\nzzz")
    cfg = SourceConfig(format="text", path=str(tmp_path / "c.txt"), document="paragraph")
    tokenize_source("c", cfg, vocab, tmp_path / "out", 1)
    table = DocTable(tmp_path / "out" / "docs.arrow")
    assert len(table) == 2
    assert table.tokens(1).tolist() == [1, 1, 1], "unknown characters map to the reserved id"


def test_empty_source_fails_and_leaves_nothing(tmp_path, gpt2_vocab):
    (tmp_path / "blank.txt").write_text("\n\n   \n")
    cfg = SourceConfig(format="text", path=str(tmp_path / "blank.txt"))
    with pytest.raises(PipelineError, match="sources.t: no documents"):
        tokenize_source("t", cfg, gpt2_vocab, tmp_path / "out", 1)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["blank.txt"], "temporary output removed"


def test_parallel_map_is_ordered_and_bounded():
    pulled = []

    def items():
        for i in itertools.count():
            pulled.append(i)
            yield i

    results = ordered_parallel_map(abs, (-i for i in items()), 2, lambda: None, ())
    first = list(itertools.islice(results, 5))
    assert first == [0, 1, 2, 3, 4]
    assert len(pulled) <= 5 + 2 * MAX_PENDING_PER_WORKER, "input is not read ahead without bound"
    results.close()


def test_batches_skip_blank_documents():
    assert list(batched_texts(["a", " ", "bb", "\n", "c"], batch_chars=2)) == [["a", "bb"], ["c"]]
