"""Layers both networks share (model/gpt.py, model/llama.py): RMSNorm, rotary positions, and
attention with document masking.

Document masking keeps each packed document's attention inside itself. Two ways to build the mask:
- dense: a (B, 1, T, T) boolean mask for `F.scaled_dot_product_attention`. It works everywhere but
  costs B·T² memory and rules out the flash kernels;
- flex: a FlexAttention `BlockMask` (`torch.nn.attention.flex_attention`), built from the segment
  ids per block of 128 x 128 positions, so fully masked blocks are skipped. It needs a compiled
  kernel on CUDA. In torch 2.13 flex attention has no backward on CPU ("FlexAttention does not
  support backward on CPU"), so training on CPU always uses the dense mask; `auto` picks flex on
  CUDA and dense elsewhere.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

DOC_MASK_KERNELS = ("auto", "flex", "dense")


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 and cast back before the weight (as HF does)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)  # (..., C)
        return self.weight * xf.to(x.dtype)


# ---- rotary positions ----------------------------------------------------------------------------


def rope_frequencies(head_dim: int, theta: float, scaling: Optional[dict] = None, device=None) -> torch.Tensor:
    """Rotation speed of each pair of head dimensions, (hs/2,) float32: theta^(-2i/hs), optionally
    with Llama 3's scaling (`llama3_scale`'s keyword arguments)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)  # (hs/2,)
    return inv_freq if scaling is None else llama3_scale(inv_freq, **scaling)


def llama3_scale(inv_freq, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings):
    """Llama 3.1's long-context scaling of rotary frequencies (hs/2,).

    r = original context / wavelength counts how often a frequency turns within the context the
    model was trained on. Fast ones (r >= high_freq_factor) stay, slow ones (r <= low_freq_factor)
    are divided by `factor`, and in between the two are blended linearly in r.
    """
    turns = original_max_position_embeddings * inv_freq / (2 * math.pi)  # r, (hs/2,)
    keep = ((turns - low_freq_factor) / (high_freq_factor - low_freq_factor)).clamp(0.0, 1.0)
    return keep * inv_freq + (1.0 - keep) * inv_freq / factor


def rope_cos_sin(pos: torch.Tensor, inv_freq: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of each position's angles for positions pos, (T,) or (B, T): each (1, 1, T, hs)
    or (B, 1, T, hs).

    HF's layout: dimension i and i + hs/2 form a pair (halves, not interleaved neighbours).
    """
    angles = pos.float()[..., None] * inv_freq  # (..., T, hs/2), in float32
    angles = torch.cat([angles, angles], dim=-1)  # (..., T, hs)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    if pos.dim() == 1:
        return cos[None, None], sin[None, None]  # (1, 1, T, hs)
    return cos[:, None], sin[:, None]  # (B, 1, T, hs)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x_i, x_{i+hs/2}) pair of x (B, nh, T, hs) by its angle."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


# ---- document masking and attention --------------------------------------------------------------


def segment_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """Position ids that restart at 0 wherever the segment id changes. (B, T) -> (B, T)."""
    B, T = segment_ids.shape
    t = torch.arange(T, device=segment_ids.device).expand(B, T)  # (B, T)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    last_start = torch.where(starts, t, 0).cummax(dim=1).values  # (B, T)
    return t - last_start


def document_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Boolean attention mask, True = may attend: causal and within the same segment. (B, 1, T, T)."""
    T = segment_ids.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()  # (T, T)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
    return (same & causal).unsqueeze(1)


def flex_available(device: torch.device) -> bool:
    """Whether flex attention can train here: a CUDA device (CPU has no backward in torch 2.13)."""
    return device.type == "cuda"


def resolve_doc_mask_kernel(kernel: str, device: torch.device, dropout: float = 0.0) -> str:
    """`flex` or `dense` for `auto` / an explicit choice on `device`. Flex attention has no dropout,
    so a model with attention dropout uses the dense mask."""
    if kernel not in DOC_MASK_KERNELS:
        raise ValueError(f"doc mask kernel must be one of {', '.join(DOC_MASK_KERNELS)}, got {kernel!r}")
    if kernel == "auto":
        return "flex" if flex_available(device) and dropout == 0.0 else "dense"
    return kernel


@torch.compiler.disable
def flex_document_mask(segment_ids: torch.Tensor):
    """A FlexAttention BlockMask: causal and within the same segment, for segment ids (B, T).

    Built eagerly (outside any compiled graph) and compiled itself on CUDA, as the FlexAttention
    docs advise for masks that change every batch."""
    from torch.nn.attention.flex_attention import create_block_mask

    B, T = segment_ids.shape

    def same_document(b, h, q, kv):
        return (q >= kv) & (segment_ids[b, q] == segment_ids[b, kv])

    return create_block_mask(same_document, B, None, T, T, device=segment_ids.device, _compile=segment_ids.is_cuda)


_compiled_flex = None


def _flex_attention(q, k, v, block_mask, enable_gqa):
    """flex_attention, compiled once per process on CUDA (its eager path is a slow reference)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if q.is_cuda:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        return _compiled_flex(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)
    return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)


def attend(q, k, v, mask=None, is_causal: bool = True, dropout: float = 0.0, enable_gqa: bool = False) -> torch.Tensor:
    """Attention of q (B, nh, T, hs) over k, v (B, nkv, S, hs) -> (B, nh, T, hs).

    mask: None (causal when is_causal, else all positions), a dense boolean mask (B, 1, T, S), or a
    FlexAttention BlockMask (from `flex_document_mask`)."""
    if mask is not None and not isinstance(mask, torch.Tensor):
        return _flex_attention(q, k, v, mask, enable_gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                          dropout_p=dropout, enable_gqa=enable_gqa)
