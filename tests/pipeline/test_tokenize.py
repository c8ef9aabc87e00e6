from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from pipeline.config import SourceConfig
from pipeline.errors import PipelineError
from pipeline.parallel import MAX_PENDING_PER_WORKER, ordered_parallel_map
from pipeline.store import TokenStore
from pipeline.tokenize import tokenize_source
from pipeline.tokenizer import load_tokenizer
from tests.helpers import text_hash, write_char_vocab


def make_corpus(folder, n=40):
    folder.mkdir()
    texts = [f"document {i}: " + "lorem ipsum " * (i % 7 + 1) for i in range(n)]
    for i, text in enumerate(texts):
        (folder / f"{i:03d}.txt").write_text(text)
    (folder / "blank.txt").write_text("  \n")
    return texts


@pytest.mark.parametrize("workers", [1, 2])
def test_round_trip_and_manifest(tmp_path, gpt2_vocab, workers, monkeypatch):
    monkeypatch.setattr("pipeline.sources.TASK_BYTES", 200)  # many tasks through the pool
    texts = make_corpus(tmp_path / "corpus")
    cfg = SourceConfig(format="text", path=str(tmp_path / "corpus"))
    manifest = tokenize_source("t", cfg, gpt2_vocab, tmp_path / "out", workers)
    store = TokenStore(tmp_path / "out")
    tok = load_tokenizer(gpt2_vocab)
    assert store.dtype == np.uint16
    assert [tok.decode(store.document(i)) for i in range(len(store))] == texts
    assert [bytes(h) for h in store.hashes] == [text_hash(t) for t in texts]
    assert manifest["docs"] == len(texts) and manifest["tokens"] == int(store.lengths.sum())
    assert manifest["text_bytes"] == sum(len(t.encode()) for t in texts) and manifest["files"] == len(texts) + 1
    assert manifest["tokenizer"] == "gpt2" and manifest["vocab_size"] == 50257
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest


def test_same_store_whatever_the_worker_count_and_task_size(tmp_path, gpt2_vocab, monkeypatch):
    make_corpus(tmp_path / "corpus")
    cfg = SourceConfig(format="text", path=str(tmp_path / "corpus"))
    outputs = []
    for workers, task_bytes in ((1, 1 << 20), (2, 100), (2, 1 << 20)):
        monkeypatch.setattr("pipeline.sources.TASK_BYTES", task_bytes)
        out = tmp_path / f"out-{workers}-{task_bytes}"
        tokenize_source("t", cfg, gpt2_vocab, out, workers)
        outputs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outputs[0] == outputs[1] == outputs[2]


def test_char_tokenizer_source(tmp_path):
    vocab = write_char_vocab(tmp_path / "vocab", "abc ")
    (tmp_path / "c.txt").write_text("abc cab\n\nzzz")
    cfg = SourceConfig(format="text", path=str(tmp_path / "c.txt"), document="paragraph")
    tokenize_source("c", cfg, vocab, tmp_path / "out", 1)
    store = TokenStore(tmp_path / "out")
    assert len(store) == 2
    assert store.document(1).tolist() == [1, 1, 1], "unknown characters map to the reserved id"


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

    results = ordered_parallel_map(abs, (-i for i in items()), 2)
    first = list(itertools.islice(results, 5))
    assert first == [0, 1, 2, 3, 4]
    assert len(pulled) <= 5 + 2 * MAX_PENDING_PER_WORKER, "input is not read ahead without bound"
    results.close()
