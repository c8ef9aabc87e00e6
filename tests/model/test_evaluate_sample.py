"""The evaluate and sample stages on a tiny model and char-level data."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.config import EvaluateConfig, SampleConfig
from model.evaluate import evaluate, load_val_sets
from model.folders import load_any
from model.gpt import GPT, GPTConfig
from model.sample import sample
from pipeline.blocks import write_blocks
from pipeline.errors import PipelineError
from tests.helpers import save_model, write_char_vocab

CHARS = "abcdefghijklmnopqrstuvwxyz .\n"
V = len(CHARS) + 2
T = 12


def write_val(path, n_blocks: int, seed: int, vocab_size: int = V, context: int = T):
    """Random blocks with a padded tail in the last block (segment 0 = padding)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, size=(n_blocks, context + 1)).astype(np.uint16)
    segments = np.ones_like(tokens)
    if n_blocks:
        segments[-1, -4:] = 0
        tokens[-1, -4:] = 0
    manifest = {"tokenizer": "char", "vocab_size": vocab_size, "eos_id": 0, "pad_id": 0, "context_length": context,
                "mode": "concat", "n_blocks": n_blocks, "n_tokens": int(tokens.size), "pad_fraction": 0.0,
                "sources": {}, "inputs": {}}
    write_blocks(path, tokens, segments, manifest)


@pytest.fixture
def model_dir(tmp_path):
    vocab = write_char_vocab(tmp_path / "vocab", CHARS)
    torch.manual_seed(0)
    save_model(GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=16)), tmp_path / "model", vocab)
    return tmp_path / "model"


def direct_loss(model, blocks, n):
    """Token-summed cross-entropy and count, computed from the logits by hand."""
    b = blocks.batch(np.arange(n))
    logits, _ = model(torch.from_numpy(b["inputs"]))
    mask = torch.from_numpy(b["loss_mask"])
    ce = F.cross_entropy(logits[mask], torch.from_numpy(b["targets"])[mask], reduction="sum")
    return float(ce), int(mask.sum())


def text_bytes(blocks, n: int) -> int:
    """UTF-8 bytes the scored targets stand for, with the ASCII test vocabulary: all but EOS (id 0)."""
    b = blocks.batch(np.arange(n))
    return int((b["targets"][b["loss_mask"]] != 0).sum())


def test_evaluate_per_source_and_overall(tmp_path, model_dir):
    val = tmp_path / "val"
    write_val(val / "code", 5, 1)
    write_val(val / "prose", 3, 2)
    write_val(val / "empty", 0, 3)
    m = evaluate(model_dir, val, EvaluateConfig(max_blocks=0, batch_size=2, device="cpu"))

    model = load_any(model_dir).eval()
    sets = load_val_sets(val)
    with torch.no_grad():
        (sc, cc), (sp, cp) = direct_loss(model, sets["code"], 5), direct_loss(model, sets["prose"], 3)
    assert m["tokens_code"] == cc == 5 * T - 4 and m["tokens_prose"] == cp == 3 * T - 4
    assert m["loss_code"] == pytest.approx(sc / cc, rel=1e-5)
    assert m["loss_prose"] == pytest.approx(sp / cp, rel=1e-5)
    assert m["loss"] == pytest.approx((sc + sp) / (cc + cp), rel=1e-5)
    assert m["tokens"] == cc + cp
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]))
    assert m["tokens_empty"] == 0 and m["loss_empty"] is None and m["perplexity_empty"] is None
    bc, bp = (text_bytes(sets[name], n) for name, n in (("code", 5), ("prose", 3)))  # ASCII: 1 byte a token, EOS 0
    assert m["bpb_code"] == pytest.approx(sc / math.log(2) / bc, rel=1e-5)
    assert m["bpb"] == pytest.approx((sc + sp) / math.log(2) / (bc + bp), rel=1e-5)
    assert m["bpb_empty"] is None
    json.dumps(m, allow_nan=False)  # a valid DVC metrics file

    first = evaluate(model_dir, val, EvaluateConfig(max_blocks=2, batch_size=16, device="cpu"))
    assert first["tokens_code"] == 2 * T and first["tokens_prose"] == 2 * T

    assert m["se_loss_code"] > 0 and m["se_bpb_prose"] > 0 and m["se_loss"] > 0
    assert m["se_loss_empty"] is None and m["se_bpb_empty"] is None


def test_val_set_error_is_the_spread_of_document_sized_units():
    from model.evaluate import ratio_se, val_set_groups

    rng = np.random.default_rng(0)
    losses = rng.uniform(10, 20, size=40)
    counts = np.full(40, 8.0)
    se = ratio_se(losses, counts)  # equal counts: the standard error of the per-unit mean loss
    assert se == pytest.approx(np.std(losses / 8, ddof=1) / math.sqrt(40), rel=1e-12)
    assert ratio_se(losses[:1], counts[:1]) is None

    # Two sources far apart, little spread within each: the gap between them is not noise.
    code, prose = 8 * (1 + rng.normal(0, 0.01, 30)), 8 * (3 + rng.normal(0, 0.01, 30))
    pooled = np.concatenate([code, prose])
    strata = np.repeat([0, 1], 30)
    within = ratio_se(pooled, np.full(60, 8.0), strata)
    assert within < 0.01 < ratio_se(pooled, np.full(60, 8.0))
    expected = math.sqrt(sum(np.var(x / 8, ddof=1) * 30 for x in (code, prose))) / 60  # independent strata
    assert within == pytest.approx(expected, rel=1e-9)

    scores = np.stack([losses[:7], counts[:7], counts[:7] * 3])
    manifest = {"context_length": 10, "n_tokens": 300, "sources": {"a": {"docs": 8}, "b": {"docs": 2}}}  # 3 blocks a document
    grouped = val_set_groups(scores, manifest, 1.0)
    assert grouped.shape == (3, 3)  # blocks 0-2, 3-5, 6
    np.testing.assert_allclose(grouped.sum(axis=1), scores.sum(axis=1))
    assert grouped[0, 0] == pytest.approx(losses[:3].sum())
    assert val_set_groups(scores, manifest, 1 / 3).shape == (3, 7)  # a third scored: neighbours are a document apart


def test_evaluate_refuses_other_vocab_or_longer_context(tmp_path, model_dir):
    write_val(tmp_path / "v1" / "code", 2, 1, vocab_size=V + 1)
    with pytest.raises(PipelineError, match="vocab size"):
        evaluate(model_dir, tmp_path / "v1", EvaluateConfig(device="cpu"))
    write_val(tmp_path / "v2" / "code", 2, 1, context=32)
    with pytest.raises(PipelineError, match="context length 32 exceeds"):
        evaluate(model_dir, tmp_path / "v2", EvaluateConfig(device="cpu"))


def test_sample_writes_n_samples_per_prompt(tmp_path, model_dir):
    cfg = SampleConfig(prompts=["the ca", "\n"], num_samples=3, max_new_tokens=8, top_k=5, device="cpu")
    out = tmp_path / "samples.md"
    samples = sample(model_dir, out, cfg, seed=7)
    assert [len(texts) for _, texts in samples] == [3, 3]
    assert all(t.startswith("the ca") for t in samples[0][1])
    text = out.read_text()
    assert text.count("### Sample") == 6 and text.count("## Prompt") == 2
    sample(model_dir, tmp_path / "again.md", cfg, seed=7)
    assert (tmp_path / "again.md").read_text() == text  # same seed, same samples
    assert not list(tmp_path.glob(".samples.md.tmp-*"))


def test_sample_without_model_is_one_line_error(tmp_path):
    with pytest.raises(PipelineError, match="no trained model"):
        sample(tmp_path / "nothing", tmp_path / "s.md", SampleConfig(device="cpu"), seed=1)


def test_scored_blocks_are_spread_over_the_val_set():
    from model.scoring import spread_rows

    assert spread_rows(10, 0).tolist() == list(range(10)) == spread_rows(10, 99).tolist()
    assert spread_rows(10, 3).tolist() == [0, 3, 6]
    rows = spread_rows(726, 480)
    assert len(set(rows.tolist())) == 480 and rows.max() > 700, "covers the whole set, no repeats"
