"""The Llama layout in one file, beside GPT-2: Llama 2/3.x, TinyLlama, SmolLM, Qwen2 and Mistral.

RMSNorm before attention and MLP, rotary positions (HF's `rotate_half` layout, with Llama 3's
`llama3` frequency scaling), grouped-query attention (n_kv_head <= n_head, the KV cache holds
only the kv heads), a SwiGLU MLP, no biases except Qwen2's q/k/v, tied or untied embeddings.

Parameter names are Hugging Face's (`model.embed_tokens`, `model.layers.N.self_attn.q_proj`,
`model.layers.N.mlp.gate_proj`, `model.norm`, `lm_head`) and Linear weights are (out, in) on both
sides, so HF checkpoints load as they are (model/folders.py reads and writes the folders). Like
GPT, `Llama` is a `model.decoder.Decoder`: the loss, document masking and decoding loop are there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.decoder import Decoder, GrowingKVCache, KVCache, init_normal
from model.layers import RMSNorm, apply_rope, attend, rope_cos_sin, rope_frequencies
from pipeline.errors import PipelineError

LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass
class LlamaConfig:
    """The shape of a Llama-layout model."""

    vocab_size: int  # tokens in the vocabulary
    block_size: int  # longest context the model reads (HF: max_position_embeddings)
    n_layer: int  # transformer blocks
    n_head: int  # query heads per block
    n_kv_head: int  # key/value heads per block (grouped-query attention); divides n_head
    n_embd: int  # width of the residual stream
    intermediate_size: int  # width of the SwiGLU MLP's hidden layer
    head_dim: Optional[int] = None  # width of one head; None means n_embd // n_head
    rope_theta: float = 10000.0  # base of the rotary frequencies
    rope_scaling: Optional[dict] = None  # Llama 3's frequency scaling: the LLAMA3_KEYS, or None
    rms_norm_eps: float = 1e-5  # epsilon inside RMSNorm's square root
    tie_weights: bool = False  # output layer shares the token embedding matrix
    qkv_bias: bool = False  # biases on the q/k/v projections (Qwen2)
    dropout: float = 0.0  # dropout on attention weights and residual branches (training only)
    doc_mask: bool = False  # trainer hint: pass segment_ids so attention stays inside documents
    bos_id: Optional[int] = None  # beginning-of-sequence token, written to HF configs
    eos_id: Optional[int] = None  # end-of-sequence token, written to HF configs

    def __post_init__(self) -> None:
        if self.head_dim is None and isinstance(self.n_embd, int) and isinstance(self.n_head, int) and self.n_head > 0:
            if self.n_embd % self.n_head:
                raise PipelineError(
                    f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}), or set model.head_dim"
                )
            self.head_dim = self.n_embd // self.n_head
        sizes = ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "intermediate_size", "head_dim")
        for name in sizes:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PipelineError(f"model.{name} must be a positive integer, got {value!r}")
        if self.n_head % self.n_kv_head:
            raise PipelineError(f"model.n_head ({self.n_head}) must be divisible by model.n_kv_head ({self.n_kv_head})")
        if self.head_dim % 2:
            raise PipelineError(f"model.head_dim ({self.head_dim}) must be even (rotary positions rotate pairs)")
        if not self.rope_theta > 0 or not self.rms_norm_eps > 0:
            raise PipelineError(f"model.rope_theta ({self.rope_theta}) and model.rms_norm_eps ({self.rms_norm_eps}) must be > 0")
        if self.rope_scaling is not None:
            self.rope_scaling = check_llama3_scaling(self.rope_scaling, "model.rope_scaling")
        if not 0.0 <= self.dropout < 1.0:
            raise PipelineError(f"model.dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_params(cls, model_cfg, vocab_size: int, block_size: int) -> "LlamaConfig":
        """Build from the `model` params section (pipeline.config.ModelConfig with arch llama)."""
        return cls(
            vocab_size=vocab_size,
            block_size=block_size,
            dropout=model_cfg.dropout,
            tie_weights=model_cfg.tie_weights,
            doc_mask=model_cfg.doc_mask,
            **model_cfg.shape(),
        )


def check_llama3_scaling(rope: dict, where: str) -> dict:
    """The LLAMA3_KEYS of `rope`, checked."""
    missing = [key for key in LLAMA3_KEYS if key not in rope]
    if missing:
        raise PipelineError(f"{where} lacks '{missing[0]}' (llama3 scaling needs {', '.join(LLAMA3_KEYS)})")
    scaling = {key: rope[key] for key in LLAMA3_KEYS}
    if not (scaling["factor"] > 0 and 0 < scaling["low_freq_factor"] < scaling["high_freq_factor"]
            and scaling["original_max_position_embeddings"] > 0):
        raise PipelineError(
            f"{where}: needs factor > 0, 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0"
        )
    return scaling


# ---- layers --------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Grouped-query self-attention with rotary positions: n_kv_head key/value heads serve n_head query heads."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.dropout = config.dropout
        self.q_proj = nn.Linear(config.n_embd, config.n_head * config.head_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.n_embd, config.n_kv_head * config.head_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.n_embd, config.n_kv_head * config.head_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.n_head * config.head_dim, config.n_embd, bias=False)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, attn_mask=None, is_causal=True, cache: Optional[KVCache] = None):
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nkv, S, hs), S = cached + T
        y = attend(q, k, v, attn_mask, is_causal, self.dropout if self.training else 0.0,
                   enable_gqa=self.n_kv_head != self.n_head)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, nh * hs)
        return self.resid_dropout(self.o_proj(y))  # (B, T, C)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = F.silu(self.gate_proj(x)) * self.up_proj(x)  # (B, T, I)
        return self.dropout(self.down_proj(h))  # (B, T, C)


class LlamaBlock(nn.Module):
    """Pre-RMSNorm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x, cos, sin, attn_mask=None, is_causal=True, cache: Optional[KVCache] = None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, is_causal, cache)  # (B, T, C)
        return x + self.mlp(self.post_attention_layernorm(x))  # (B, T, C)


# ---- model ---------------------------------------------------------------------------------------


class Llama(Decoder):
    """Llama-layout language model; the loss and generation are Decoder's (model/decoder.py), its
    folders model/folders.py's."""

    CONFIG = LlamaConfig
    ARCH = "llama"
    EMBEDDING = "model.embed_tokens.weight"

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = nn.ModuleDict(
            dict(
                embed_tokens=nn.Embedding(config.vocab_size, config.n_embd),
                layers=nn.ModuleList([LlamaBlock(config) for _ in range(config.n_layer)]),
                norm=RMSNorm(config.n_embd, config.rms_norm_eps),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", self._frequencies(None), persistent=False)  # rotation speeds, computed once
        self.apply(init_normal)
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):  # projections back into the residual stream
                nn.init.normal_(p, mean=0.0, std=residual_std)

    def _frequencies(self, device) -> torch.Tensor:
        c = self.config
        return rope_frequencies(c.head_dim, c.rope_theta, c.rope_scaling, device)  # (hs/2,)

    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    def fresh_buffers(self, device) -> dict[str, torch.Tensor]:
        return {"inv_freq": self._frequencies(device)}

    def _hidden(self, idx, pos, attn_mask=None, is_causal=True, caches=None) -> torch.Tensor:
        """Final (normed) hidden states (B, T, C) for tokens idx (B, T) at positions pos ((T,) or (B, T))."""
        x = self.model.embed_tokens(idx)  # (B, T, C)
        cos, sin = rope_cos_sin(pos, self.inv_freq, x.dtype)  # (B or 1, 1, T, hs)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, attn_mask, is_causal, None if caches is None else caches[i])
        return self.model.norm(x)

    def _new_caches(self) -> list[KVCache]:
        return [GrowingKVCache(self.config.block_size) for _ in range(self.config.n_layer)]

    # ---- accounting ----------------------------------------------------------------------------

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count (tied weights once). non_embedding: leave out the token table when it is
        only a lookup (not also the output layer)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and not self.config.tie_weights:
            n -= self.model.embed_tokens.weight.numel()
        return n

    def flops_per_token(self, seq_len: Optional[int] = None) -> int:
        """Training FLOPs per token, 6N + 12·n_layer·(n_head·head_dim)·T (PaLM appendix B)."""
        T = seq_len or self.config.block_size
        return 6 * self.num_params() + 12 * self.config.n_layer * self.config.n_head * self.config.head_dim * T
