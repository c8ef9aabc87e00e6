"""The Llama layout in one file, beside GPT-2: Llama 2/3.x, TinyLlama, SmolLM, Qwen2 and Mistral.

RMSNorm before attention and MLP, rotary positions (HF's `rotate_half` layout, with Llama 3's
`llama3` frequency scaling), grouped-query attention (n_kv_head <= n_head, the KV cache holds
only the kv heads), a SwiGLU MLP, no biases except Qwen2's q/k/v, tied or untied embeddings.

Parameter names are Hugging Face's (`model.embed_tokens`, `model.layers.N.self_attn.q_proj`,
`model.layers.N.mlp.gate_proj`, `model.norm`, `lm_head`) and Linear weights are (out, in) on both
sides, so HF checkpoints load as they are. `Llama` has GPT's interface (forward, generate,
num_params, flops_per_token, save/load, save_hf/from_hf): both are `model.gpt.Decoder`s, which
holds the loss, document masking, decoding loop and our checkpoint format (`"arch": "llama"` in
model_config.json).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import gpt
from model.gpt import CONFIG_FILE, GPT, HF_CONFIG_FILE, WEIGHTS_FILE, Decoder, _read_hf_tensors
from model.layers import KVCache, RMSNorm, apply_rope, attend, rope_cos_sin, rope_frequencies
from pipeline.errors import PipelineError
from pipeline.io import atomic_dir, write_json

ARCH = "llama"  # the "arch" entry of our model_config.json
GENERATION_CONFIG_FILE = "generation_config.json"
HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
HF_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "num_experts_per_tok", "moe_intermediate_size")
HF_IGNORED = ("rotary_emb.inv_freq",)  # a buffer some older HF checkpoints saved; we compute it
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
            self.rope_scaling = _llama3_scaling(self.rope_scaling, "model.rope_scaling")
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

    @classmethod
    def from_hf_config(cls, hf: dict, source: str) -> "LlamaConfig":
        """Read a Llama/Qwen2/Mistral config.json dict; anything we do not implement is a one-line error."""
        arch = (hf.get("architectures") or [HF_ARCHITECTURES.get(hf.get("model_type"), hf.get("model_type"))])[0]
        if arch not in HF_ARCHITECTURES.values():
            supported = ", ".join(HF_ARCHITECTURES.values())
            raise PipelineError(f"{source}: architectures '{arch}' is not supported ({supported})")
        for key in HF_MOE_KEYS:
            if hf.get(key):
                raise PipelineError(f"{source}: {key} is set: mixture-of-experts models are not supported")
        if hf.get("hidden_act", "silu") != "silu":
            raise PipelineError(f"{source}: hidden_act '{hf['hidden_act']}' is not supported (silu)")
        for key in ("attention_bias", "mlp_bias"):
            if hf.get(key):
                raise PipelineError(f"{source}: {key} is not supported (the only biases are Qwen2's q/k/v)")
        need = {key: _hf_key(hf, key, source) for key in ("vocab_size", "hidden_size", "intermediate_size",
                                                          "num_hidden_layers", "num_attention_heads")}
        rope_theta, rope_scaling = _hf_rope(hf, source)
        try:
            return cls(
                vocab_size=need["vocab_size"],
                block_size=_hf_block_size(hf, source),
                n_layer=need["num_hidden_layers"],
                n_head=need["num_attention_heads"],
                n_kv_head=hf.get("num_key_value_heads") or need["num_attention_heads"],
                n_embd=need["hidden_size"],
                intermediate_size=need["intermediate_size"],
                head_dim=hf.get("head_dim"),
                rope_theta=rope_theta,
                rope_scaling=rope_scaling,
                rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
                tie_weights=bool(hf.get("tie_word_embeddings", False)),
                qkv_bias=arch == HF_ARCHITECTURES["qwen2"],
                dropout=hf.get("attention_dropout", 0.0),
                bos_id=_first(hf.get("bos_token_id")),
                eos_id=_first(hf.get("eos_token_id")),
            )
        except PipelineError as exc:
            raise PipelineError(f"{source}: {exc}") from None

    def to_hf_config(self) -> dict:
        """A config.json dict that transformers loads as LlamaForCausalLM (Qwen2ForCausalLM with qkv_bias).

        Rope settings are written in both spellings: transformers 5's `rope_parameters`, and
        `rope_theta` + `rope_scaling` for older readers.
        """
        model_type = "qwen2" if self.qkv_bias else "llama"
        scaling = {"rope_type": "llama3", **self.rope_scaling} if self.rope_scaling else None
        hf = {
            "architectures": [HF_ARCHITECTURES[model_type]],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.block_size,
            "hidden_size": self.n_embd,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.n_layer,
            "num_attention_heads": self.n_head,
            "num_key_value_heads": self.n_kv_head,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta, **(scaling or {})},
            "rope_theta": self.rope_theta,
            "rope_scaling": scaling,
            "attention_dropout": self.dropout,
            "tie_word_embeddings": self.tie_weights,
            "bos_token_id": self.bos_id,
            "eos_token_id": self.eos_id,
            "initializer_range": 0.02,
            "use_cache": True,
        }
        if self.qkv_bias:
            hf.update(use_sliding_window=False, sliding_window=None)
        else:
            hf.update(attention_bias=False, mlp_bias=False)
        return hf


def _first(token_id):
    """A token id, or the first of a list of them (Llama 3.1 lists several EOS ids)."""
    return token_id[0] if isinstance(token_id, list) and token_id else token_id


def _hf_key(hf: dict, key: str, source: str):
    if key not in hf:
        raise PipelineError(f"{source}: '{key}' is missing")
    return hf[key]


def _hf_rope(hf: dict, source: str) -> tuple[float, Optional[dict]]:
    """rope_theta and our rope_scaling from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling`."""
    key = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    rope = hf.get(key) or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise PipelineError(f"{source}: {key} rope_type '{kind}' is not supported (default, llama3)")
    return theta, _llama3_scaling(rope, f"{source}: {key}")


def _llama3_scaling(rope: dict, where: str) -> dict:
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


def _hf_block_size(hf: dict, source: str) -> int:
    """max_position_embeddings, or the sliding window where one is active and shorter: up to the
    window's length, sliding-window attention is plain causal attention (Mistral 7B v0.1)."""
    block = _hf_key(hf, "max_position_embeddings", source)
    window = hf.get("sliding_window")
    active = hf.get("use_sliding_window", True) and "sliding_attention" in hf.get("layer_types", ["sliding_attention"])
    return min(block, window) if active and window else block


# ---- layers --------------------------------------------------------------------------------------


class GrowingKVCache(KVCache):
    """A KVCache that grows as it fills (doubling, up to max_len) instead of reserving max_len at once:
    HF models declare contexts of up to 131072 positions, far more than a generation uses."""

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, nkv, T, hs = k.shape
        if self.k is None:
            self.k, self.v = k.new_zeros(B, nkv, 0, hs), v.new_zeros(B, nkv, 0, hs)
        if self.pos + T > self.k.size(2):
            grow = min(self.max_len, max(self.pos + T, 2 * self.k.size(2))) - self.k.size(2)
            self.k = F.pad(self.k, (0, 0, 0, grow))  # (B, nkv, size, hs)
            self.v = F.pad(self.v, (0, 0, 0, grow))
        return super().append(k, v)


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
    """Llama-layout language model; the loss, generation and checkpoint files are Decoder's (model/gpt.py)."""

    CONFIG = LlamaConfig
    ARCH = ARCH  # "llama"
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
        self.apply(GPT._init_weights)
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):  # projections back into the residual stream
                nn.init.normal_(p, mean=0.0, std=residual_std)

    def _hidden(self, idx, pos, attn_mask=None, is_causal=True, caches=None) -> torch.Tensor:
        """Final (normed) hidden states (B, T, C) for tokens idx (B, T) at positions pos ((T,) or (B, T))."""
        x = self.model.embed_tokens(idx)  # (B, T, C)
        c = self.config
        inv_freq = rope_frequencies(c.head_dim, c.rope_theta, c.rope_scaling, idx.device)  # (hs/2,)
        cos, sin = rope_cos_sin(pos.expand(idx.shape), inv_freq, x.dtype)  # (B, 1, T, hs)
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

    # ---- checkpoints ---------------------------------------------------------------------------

    def save_hf(self, path: str | Path, eos_id: Optional[int] = None) -> None:
        """Write a Hugging Face folder (config.json, model.safetensors, generation_config.json) atomically.

        eos_id: written as eos_token_id instead of the config's.
        """
        from safetensors.torch import save_file

        hf = self.config.to_hf_config()
        if eos_id is not None:
            hf["eos_token_id"] = eos_id
        with atomic_dir(path) as tmp:
            save_file(self._tensors(), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            write_json(tmp / HF_CONFIG_FILE, hf)
            write_json(tmp / GENERATION_CONFIG_FILE, {key: hf[key] for key in ("bos_token_id", "eos_token_id")})

    @classmethod
    def from_hf(cls, path: str | Path, map_location="cpu", dropout: Optional[float] = None) -> "Llama":
        """Load a local Hugging Face Llama/Qwen2/Mistral folder (safetensors, single or sharded).
        dropout: override HF's attention_dropout."""
        path = Path(path)
        if not (path / HF_CONFIG_FILE).is_file():
            raise PipelineError(f"{path / HF_CONFIG_FILE}: not found (not a Hugging Face model folder)")
        config = LlamaConfig.from_hf_config(json.loads((path / HF_CONFIG_FILE).read_text()), str(path / HF_CONFIG_FILE))
        if dropout is not None:
            config = dataclasses.replace(config, dropout=dropout)
        tensors, weights = _read_hf_tensors(path)
        tensors = {name: t for name, t in tensors.items() if not name.endswith(HF_IGNORED)}
        return cls._from_tensors(config, tensors, weights, map_location)


def load_any(path: str | Path, map_location="cpu", dropout: Optional[float] = None) -> GPT | Llama:
    """Load any model folder: ours of either architecture, Hugging Face's (GPT-2 or Llama layout), or
    a LoRA adapter folder (adapter_config.json: its base model with the adapters merged in)."""
    from model.lora import ADAPTER_CONFIG_FILE, load_adapter

    path = Path(path)
    if (path / ADAPTER_CONFIG_FILE).is_file():
        return load_adapter(path, map_location, dropout)
    if (path / CONFIG_FILE).is_file():
        is_llama = json.loads((path / CONFIG_FILE).read_text()).get("arch") == ARCH
        return (Llama if is_llama else GPT).load(path, map_location, dropout)
    if (path / HF_CONFIG_FILE).is_file():
        if json.loads((path / HF_CONFIG_FILE).read_text()).get("model_type", "gpt2") != "gpt2":
            return Llama.from_hf(path, map_location, dropout)
    return gpt.load_gpt2(path, map_location, dropout)
