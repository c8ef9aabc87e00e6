"""scan: what vocabularies learned from the data take from each source."""

from __future__ import annotations

import json


from pipeline.config import SourceConfig, SplitConfig, TokenizerConfig
from pipeline.hashing import content_hashes, is_val, val_threshold
from pipeline.scan import scan_source


def test_bpe_sample_holds_train_documents_only_in_order_up_to_the_budget(tmp_path):
    texts = [f"document {i}: some words, then more words {i * 7}" for i in range(400)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = SourceConfig(format="jsonl", path=str(tmp_path / "d.jsonl"))
    split = SplitConfig(val_fraction=0.3)
    hashes, _ = content_hashes(texts)
    train = [t for t, v in zip(texts, is_val(hashes, val_threshold(0.3))) if not v]

    whole = scan_source("d", cfg, TokenizerConfig(name="bpe"), split, tmp_path / "all", workers=2)
    sample = [json.loads(line) for line in (tmp_path / "all/sample.jsonl").read_text().splitlines()]
    assert sample == train and whole["sample_documents"] == len(train) and 0 < len(train) < 400

    budget = 1000
    part = scan_source("d", cfg, TokenizerConfig(name="bpe", sample_bytes=budget), split, tmp_path / "part", workers=2)
    sample = [json.loads(line) for line in (tmp_path / "part/sample.jsonl").read_text().splitlines()]
    assert sample == train[: len(sample)]
    assert sum(len(t) for t in sample[:-1]) < budget <= sum(len(t) for t in sample) == part["sample_bytes"]
    assert json.loads((tmp_path / "part/scan.json").read_text()) == part


def test_fixed_vocabularies_do_not_read_the_source(tmp_path):
    missing = SourceConfig(format="text", path=str(tmp_path / "nowhere"))
    assert scan_source("x", missing, TokenizerConfig(name="gpt2"), SplitConfig(), tmp_path / "scan", 1) == {"tokenizer": "gpt2"}
    assert sorted(p.name for p in (tmp_path / "scan").iterdir()) == ["scan.json"]
