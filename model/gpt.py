"""GPT-2 in one file: its config and the network, with the modern recipe's layer switches.

Module names follow Hugging Face's GPT-2 (`transformer.h.0.attn.c_attn`, ...) so converting a
checkpoint is a rename-free copy (model/folders.py reads and writes the folders).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.decoder import Decoder, KVCache, init_normal
from model.layers import RMSNorm, apply_rope, attend, rope_cos_sin, rope_frequencies
from pipeline.errors import PipelineError

# The layers a model can switch on (each a GPTConfig field) and the choices for each
POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "relu2")
NORM_EPS = 1e-5


@dataclass
class GPTConfig:
    """The shape of a GPT-2 model, and the layer switches of the modern recipe (defaults: GPT-2's own)."""

    vocab_size: int  # tokens in the vocabulary (from the tokenizer / data manifest)
    block_size: int  # longest context the model reads (number of positions)
    n_layer: int  # transformer blocks
    n_head: int  # attention heads per block
    n_embd: int  # width of the residual stream; a multiple of n_head
    dropout: float = 0.0  # dropout on embeddings, attention weights and residual branches
    bias: bool = True  # biases in Linear and LayerNorm layers (GPT-2 has them)
    tie_weights: bool = True  # output layer shares the token embedding matrix
    doc_mask: bool = False  # trainer hint: pass segment_ids so attention stays inside documents
    positions: str = "learned"  # learned (GPT-2's table of positions) | rope (rotary positions on queries and keys)
    rope_theta: float = 10000.0  # base of the rotary frequencies (positions: rope)
    norm: str = "layernorm"  # layernorm (GPT-2) | rmsnorm (scale only, no mean subtracted)
    mlp: str = "gelu"  # gelu (GPT-2's tanh GELU) | relu2 (ReLU squared)
    qk_norm: bool = False  # RMS-normalise each head's queries and keys (learned gains) before attention
    zero_init: bool = False  # output projections of attention and MLP start at zero: every block starts as the identity
    logit_softcap: float = 0.0  # logits become cap * tanh(logits / cap), bounding them to (-cap, cap); 0: off
    unet: bool = False  # U-net skips: block n_layer-1-i also adds the output of block i (first half), with a learned weight

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PipelineError(f"model.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise PipelineError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise PipelineError(f"model.dropout must be in [0, 1), got {self.dropout}")
        for name, choices in (("positions", POSITIONS), ("norm", NORMS), ("mlp", MLPS)):
            if getattr(self, name) not in choices:
                raise PipelineError(f"model.{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if self.positions == "rope" and (self.n_embd // self.n_head) % 2:
            raise PipelineError(f"model.positions: rope needs an even head width, n_embd / n_head is {self.n_embd // self.n_head}")
        if not self.rope_theta > 0 or self.logit_softcap < 0:
            raise PipelineError(f"model.rope_theta must be > 0 and model.logit_softcap >= 0, got {self.rope_theta}, {self.logit_softcap}")

    @classmethod
    def from_params(cls, model_cfg, vocab_size: int, block_size: int) -> "GPTConfig":
        """Build from the `model` params section (pipeline.config.ModelConfig, validated at load)."""
        return cls(
            vocab_size=vocab_size,
            block_size=block_size,
            dropout=model_cfg.dropout,
            bias=model_cfg.bias,
            tie_weights=model_cfg.tie_weights,
            doc_mask=model_cfg.doc_mask,
            **model_cfg.shape(),
            **model_cfg.layers(),
        )


GPT2_LAYERS = {f.name: f.default for f in dataclasses.fields(GPTConfig)
               if f.name in ("positions", "norm", "mlp", "qk_norm", "zero_init", "logit_softcap", "unet")}


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        head_dim = config.n_embd // config.n_head
        self.q_norm = RMSNorm(head_dim, NORM_EPS) if config.qk_norm else None
        self.k_norm = RMSNorm(head_dim, NORM_EPS) if config.qk_norm else None

    def forward(self, x, rope=None, attn_mask=None, is_causal=True, cache: Optional[KVCache] = None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, C) each
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nh, S, hs), S = cached + T
        y = attend(q, k, v, attn_mask, is_causal, self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.relu2 = config.mlp == "relu2"

    def forward(self, x):
        x = self.c_fc(x)  # (B, T, 4C)
        x = F.relu(x).square() if self.relu2 else F.gelu(x, approximate="tanh")
        return self.dropout(self.c_proj(x))  # (B, T, C)


def make_norm(config: GPTConfig) -> nn.Module:
    """GPT-2's LayerNorm, or RMSNorm (`norm: rmsnorm`)."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, NORM_EPS)
    return nn.LayerNorm(config.n_embd, eps=NORM_EPS, bias=config.bias)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, attn_mask=None, is_causal=True, cache: Optional[KVCache] = None):
        x = x + self.attn(self.ln_1(x), rope, attn_mask, is_causal, cache)  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


class GPT(Decoder):
    """GPT-2 language model."""

    CONFIG = GPTConfig
    ARCH = "gpt2"
    EMBEDDING = "transformer.wte.weight"
    FUSED = {"attn.c_attn": 3}  # queries, keys and values in one Linear

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        layers = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.positions == "learned":
            layers["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        layers.update(drop=nn.Dropout(config.dropout), h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                      ln_f=make_norm(config))
        self.transformer = nn.ModuleDict(layers)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        if config.positions == "rope":  # rotation speeds, computed once (not saved: they follow from the config)
            self.register_buffer("inv_freq", rope_frequencies(config.n_embd // config.n_head, config.rope_theta), persistent=False)
        self.skip_weights = nn.Parameter(torch.ones(config.n_layer // 2)) if config.unet else None
        self.apply(init_normal)
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # projections back into the residual stream
                nn.init.zeros_(p) if config.zero_init else nn.init.normal_(p, mean=0.0, std=residual_std)

    def blocks(self) -> nn.ModuleList:
        return self.transformer.h

    def fresh_buffers(self, device) -> dict[str, torch.Tensor]:
        c = self.config
        return {"inv_freq": rope_frequencies(c.n_embd // c.n_head, c.rope_theta, device=device)} if c.positions == "rope" else {}

    def _hidden(self, idx, pos, attn_mask=None, is_causal=True, caches=None) -> torch.Tensor:
        """Final (normed) hidden states (B, T, C) for tokens idx (B, T) at positions pos ((T,) or (B, T))."""
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.positions == "learned":
            x = x + self.transformer.wpe(pos)
        else:
            rope = rope_cos_sin(pos, self.inv_freq, x.dtype)  # cos, sin: (B or 1, 1, T, hs) each
        x = self.transformer.drop(x)
        skips, half = [], self.config.n_layer // 2
        for i, block in enumerate(self.transformer.h):
            if self.skip_weights is not None and i >= self.config.n_layer - half:
                x = x + self.skip_weights[self.config.n_layer - 1 - i] * skips.pop()  # block i pairs with n_layer-1-i
            x = block(x, rope, attn_mask, is_causal, None if caches is None else caches[i])
            if self.skip_weights is not None and i < half:
                skips.append(x)
        return self.transformer.ln_f(x)

    # ---- accounting ----------------------------------------------------------------

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count (tied weights once). non_embedding: leave out the lookup-only tables
        (positions, and the token table when it is not also the output layer)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
            if not self.config.tie_weights:
                n -= self.transformer.wte.weight.numel()
        return n

    def flops_per_token(self, seq_len: Optional[int] = None) -> int:
        """Training FLOPs per token, 6N + 12·n_layer·n_embd·T (PaLM appendix B, as nanoGPT)."""
        T = seq_len or self.config.block_size
        return 6 * self.num_params() + 12 * self.config.n_layer * self.config.n_embd * T

    def _new_caches(self) -> list[KVCache]:
        return [KVCache(self.config.block_size) for _ in range(self.config.n_layer)]
