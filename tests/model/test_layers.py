"""Shared layers: rotary tables, and document masking by dense mask or FlexAttention block mask."""

import warnings

import pytest
import torch

from model.layers import (
    attend, document_mask, flex_document_mask, resolve_doc_mask_kernel, rope_cos_sin, rope_frequencies,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_rope_cos_sin_takes_shared_or_per_row_positions():
    """Positions (T,) give one table for every row, (B, T) one per row: the same values where they meet."""
    inv_freq = rope_frequencies(8, 500.0)
    pos = torch.tensor([[0, 1, 2, 0, 1, 5], [3, 4, 0, 1, 2, 3]])
    cos, sin = rope_cos_sin(pos, inv_freq, torch.float32)
    flat_cos, flat_sin = rope_cos_sin(torch.arange(6), inv_freq, torch.float32)
    assert cos.shape == (2, 1, 6, 8) and flat_cos.shape == (1, 1, 6, 8)
    assert torch.equal(cos[0, 0, :3], flat_cos[0, 0, :3]) and torch.equal(sin[1, 0, 2:5], flat_sin[0, 0, :3])


def test_a_loaded_model_rebuilds_its_rotary_frequencies(tmp_path):
    """The frequencies are a buffer computed once, not saved: a model built on the meta device and
    loaded from its folder gets them back, equal to a fresh model's."""
    from model.folders import load_any
    from model.gpt import GPT, GPTConfig
    from model.llama import Llama, LlamaConfig
    from tests.helpers import save_model

    for model in (GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16, positions="rope")),
                  Llama(LlamaConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_kv_head=1, n_embd=16, intermediate_size=24))):
        assert "inv_freq" not in model.state_dict()
        loaded = load_any(save_model(model, tmp_path / model.ARCH))
        assert loaded.inv_freq.device.type == "cpu" and torch.equal(loaded.inv_freq, model.inv_freq)
        idx = torch.randint(0, 20, (1, 8))
        assert torch.equal(loaded.eval()(idx)[0], model.eval()(idx)[0])


def test_auto_picks_flex_only_where_it_trains():
    assert resolve_doc_mask_kernel("auto", CPU) == "dense", "torch 2.13 has no CPU backward for flex attention"
    assert resolve_doc_mask_kernel("auto", CUDA) == "flex"
    assert resolve_doc_mask_kernel("auto", CUDA, dropout=0.1) == "dense", "flex attention has no dropout"
    assert resolve_doc_mask_kernel("dense", CUDA) == "dense"
    with pytest.raises(ValueError):
        resolve_doc_mask_kernel("fast", CPU)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_flex_block_mask_attends_like_the_dense_mask(kv_heads):
    """Forward only: on CPU flex attention runs (eagerly) without a backward."""
    g = torch.Generator().manual_seed(0)
    B, H, T, D = 2, 4, 40, 8
    q = torch.randn(B, H, T, D, generator=g)
    k, v = torch.randn(B, kv_heads, T, D, generator=g), torch.randn(B, kv_heads, T, D, generator=g)
    segments = torch.tensor([[1] * 7 + [2] * 20 + [3] * 13, [1] * 40])
    gqa = kv_heads != H
    dense = attend(q, k, v, document_mask(segments), is_causal=False, enable_gqa=gqa)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # flex attention warns that its eager path is a slow reference
        flex = attend(q, k, v, flex_document_mask(segments), is_causal=False, enable_gqa=gqa)
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)
    causal = attend(q[1:], k[1:], v[1:], enable_gqa=gqa)  # one segment: plain causal attention
    torch.testing.assert_close(dense[1:], causal, atol=1e-5, rtol=1e-5)


def test_a_model_with_the_flex_kernel_scores_like_the_dense_one():
    from model.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, block_size=32, n_layer=2, n_head=2, n_embd=16, doc_mask=True, positions="rope")).eval()
    idx = torch.randint(0, 30, (2, 32))
    segments = torch.cat([torch.ones(2, 12, dtype=torch.long), 2 * torch.ones(2, 20, dtype=torch.long)], dim=1)
    model.doc_mask_kernel = "dense"
    dense, _ = model(idx, segment_ids=segments)
    model.doc_mask_kernel = "flex"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        flex, _ = model(idx, segment_ids=segments)
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)
