"""Shared layers: rotary tables, and document masking by dense mask or FlexAttention block mask."""

import warnings

import pytest
import torch

from model.layers import (
    RopeTable, attend, document_mask, flex_document_mask, resolve_doc_mask_kernel, rope_cos_sin, rope_frequencies,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_the_rope_table_gives_rope_cos_sin_values():
    table = RopeTable(head_dim=8, theta=500.0, length=32)
    pos = torch.tensor([[0, 1, 2, 0, 1, 5], [3, 4, 0, 1, 2, 3]])
    want = rope_cos_sin(pos, rope_frequencies(8, 500.0), torch.float32)
    got = table(pos, torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(got, want)) and got[0].shape == (2, 1, 6, 8)
    flat = table(torch.arange(6), torch.float32)
    assert flat[0].shape == (1, 1, 6, 8) and torch.equal(flat[0][0], rope_cos_sin(torch.arange(6)[None], rope_frequencies(8, 500.0), torch.float32)[0][0])


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
