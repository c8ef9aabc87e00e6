"""GPT-2 in one file: config, model, checkpoints (ours and Hugging Face's) and KV-cache generation.

Module names follow Hugging Face's GPT-2 (`transformer.h.0.attn.c_attn`, ...) so converting a
checkpoint is a rename-free copy, with HF's Conv1D weights transposed to nn.Linear's layout.

Checkpoint formats (folders):
- ours: `model.safetensors` (our parameter names; `lm_head.weight` omitted when tied) and
  `model_config.json` (the GPTConfig fields). A trainer checkpoint may add a `tokenizer/` folder.
- Hugging Face: `config.json` and `model.safetensors` (or `pytorch_model.bin`, or a sharded
  `*.index.json` of either). Nothing is ever unpickled beyond plain tensors.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.layers import (
    KVCache, RMSNorm, RopeTable, apply_rope, attend, document_mask, flex_document_mask, resolve_doc_mask_kernel,
    segment_positions,
)
from pipeline.errors import PipelineError
from pipeline.io import atomic_dir, write_json

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
TOKENIZER_DIR = "tokenizer"
HF_CONFIG_FILE = "config.json"
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
HF_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HF_IGNORED = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers in older HF checkpoints
GPT2_EOS_ID = 50256

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

    def hf_blocker(self) -> Optional[str]:
        """The first switch Hugging Face's GPT2LMHeadModel cannot represent, as `model.<key>: <value>`
        (None: exportable). Zero-initialised projections are only a starting point, so they export."""
        for name in ("positions", "norm", "mlp", "qk_norm", "logit_softcap", "unet"):
            value, gpt2 = getattr(self, name), GPT2_LAYERS[name]
            if value != gpt2:
                return f"model.{name}: {str(value).lower()}"
        if not self.bias:
            return "model.bias: false (Hugging Face GPT-2 always has biases)"
        return None


GPT2_LAYERS = {f.name: f.default for f in dataclasses.fields(GPTConfig)
               if f.name in ("positions", "norm", "mlp", "qk_norm", "zero_init", "logit_softcap", "unet")}


def config_from_dict(config_class: type, data: dict, source: str):
    """A model config dataclass from the dict written to model_config.json; unknown or missing
    keys give a one-line error naming `source`."""
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(config_class)})
    if unknown:
        raise PipelineError(f"{source}: unknown key '{unknown[0]}'")
    try:
        return config_class(**data)
    except TypeError as exc:
        raise PipelineError(f"{source}: {exc}") from None


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


class Decoder(nn.Module):
    """What GPT-2 and the Llama layout (model/llama.py) share: the loss with document masking, the
    decoding loop and our checkpoint format. A subclass sets CONFIG (its config class), ARCH (the
    "arch" written to model_config.json), EMBEDDING (the token embedding's parameter name, which
    a tied output layer shares) and FUSED (Linear layers that stack several matrices, by name
    suffix), and defines `config`, `lm_head`, `_hidden` and `_new_caches`.

    `doc_mask_kernel` (auto | flex | dense; model/layers.py) says how document masking is computed;
    it is a runtime choice, not part of the checkpoint.
    """

    CONFIG: type
    ARCH: str
    EMBEDDING: str
    FUSED: dict[str, int] = {}
    doc_mask_kernel: str = "auto"

    def forward(self, idx, targets=None, loss_mask=None, segment_ids=None):
        """Logits (B, T, vocab) for tokens idx (B, T), and the mean loss when targets (B, T) are given.

        loss_mask (B, T) bool: only True positions count in the loss (all when None).
        segment_ids (B, T): when given, attention stays inside each segment and positions restart at
        0 at every segment start, so each packed document sees only itself.
        """
        B, T = idx.shape
        if T > self.config.block_size:
            raise PipelineError(f"input of {T} tokens is longer than the model's block_size {self.config.block_size}")
        if segment_ids is None:
            pos = torch.arange(T, device=idx.device)  # (T,)
            x = self._hidden(idx, pos)
        else:
            if segment_ids.shape != idx.shape:
                raise ValueError(f"segment_ids {tuple(segment_ids.shape)} do not match idx {tuple(idx.shape)}")
            kernel = resolve_doc_mask_kernel(self.doc_mask_kernel, idx.device, self.config.dropout if self.training else 0.0)
            mask = flex_document_mask(segment_ids) if kernel == "flex" else document_mask(segment_ids)
            x = self._hidden(idx, segment_positions(segment_ids), mask, is_causal=False)
        logits = self._logits(x)  # (B, T, vocab)
        if targets is None:
            return logits, None
        if loss_mask is not None:
            targets = targets.masked_fill(~loss_mask.bool(), -100)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100, reduction="sum")
        count = (targets != -100).sum().clamp(min=1)
        return logits, loss / count

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """The output layer on hidden states (..., C), soft-capped when the config says so."""
        logits = self.lm_head(x)  # (..., vocab)
        cap = getattr(self.config, "logit_softcap", 0.0)
        return cap * torch.tanh(logits.float() / cap) if cap else logits

    def hidden_matrices(self) -> list[tuple[nn.Parameter, int]]:
        """The weights of the Linear layers inside the blocks (what Muon updates: not the embeddings,
        the output layer, gains or biases), each with the number of matrices it stacks along its
        rows (GPT-2's fused q/k/v: 3), so each can be orthogonalised on its own."""
        out = []
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and module is not self.lm_head and module.weight.requires_grad:
                parts = next((n for suffix, n in self.FUSED.items() if name.endswith(suffix)), 1)
                out.append((module.weight, parts))
        return out

    def _tensors(self) -> dict[str, torch.Tensor]:
        """State dict for saving: detached, contiguous, CPU, one copy of tied weights."""
        state = self.state_dict()
        if self.config.tie_weights:
            state.pop("lm_head.weight")
        return {name: t.detach().cpu().contiguous() for name, t in state.items()}

    def save_files(self, folder: str | Path, tokenizer_dir: str | Path | None = None) -> None:
        """Write model.safetensors + model_config.json (+ a copy of tokenizer_dir as `tokenizer/`) into an
        existing folder (not atomic: for callers that build a larger checkpoint inside their own `atomic_dir`)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        save_file(self._tensors(), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        write_json(folder / CONFIG_FILE, {"arch": self.ARCH, **dataclasses.asdict(self.config)})
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, folder / TOKENIZER_DIR)

    def save(self, path: str | Path, tokenizer_dir: str | Path | None = None) -> None:
        """Write our checkpoint folder atomically, with a copy of tokenizer_dir as `tokenizer/`."""
        with atomic_dir(path) as tmp:
            self.save_files(tmp, tokenizer_dir)

    @classmethod
    def load(cls, path: str | Path, map_location="cpu", dropout: Optional[float] = None) -> "Decoder":
        """Load a folder written by `save` (float32 weights). dropout: override the saved value."""
        from safetensors.torch import load_file

        path = Path(path)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (path / name).is_file():
                raise PipelineError(f"{path / name}: not found (not a tinyGPT checkpoint folder)")
        data = json.loads((path / CONFIG_FILE).read_text())
        arch = data.pop("arch", "gpt2")  # checkpoints from before the Llama layout have no "arch"
        if arch != cls.ARCH:
            raise PipelineError(f"{path / CONFIG_FILE}: a '{arch}' checkpoint, not '{cls.ARCH}' (load it with load_any)")
        if dropout is not None:
            data["dropout"] = dropout
        config = config_from_dict(cls.CONFIG, data, str(path / CONFIG_FILE))
        return cls._from_tensors(config, load_file(str(path / WEIGHTS_FILE)), str(path / WEIGHTS_FILE), map_location)

    @classmethod
    def _from_tensors(cls, config, tensors: dict, source: str, map_location) -> "Decoder":
        """Build a model from a state dict, checking names and shapes first (one-line errors)."""
        with torch.device("meta"):
            model = cls(config)  # no memory, no random init: every tensor comes from the checkpoint
        expected = model.state_dict()
        if config.tie_weights:
            expected.pop("lm_head.weight")
            tensors.pop("lm_head.weight", None)
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            what = f"missing tensor '{missing[0]}'" if missing else f"unexpected tensor '{unexpected[0]}'"
            raise PipelineError(f"{source}: {what} for a model with {config.n_layer} layers (checkpoint does not match its config)")
        for name, want in expected.items():
            if tuple(tensors[name].shape) != tuple(want.shape):
                raise PipelineError(
                    f"{source}: tensor '{name}' has shape {tuple(tensors[name].shape)}, the config implies {tuple(want.shape)}"
                )
        state = {name: t.to(device=map_location, dtype=torch.float32) for name, t in tensors.items()}
        if config.tie_weights:
            state["lm_head.weight"] = state[cls.EMBEDDING]
        model.load_state_dict(state, assign=True)
        if config.tie_weights:
            model.lm_head.weight = model.get_parameter(cls.EMBEDDING)
        return model

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        eos_id: Optional[int | Sequence[int]] = None,
        generator: Optional[torch.Generator] = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Continue idx (B, T) by up to max_new_tokens tokens; returns (B, T + new).

        temperature 0 is greedy. top_k keeps the k likeliest tokens, top_p the smallest set whose
        probability reaches p. With eos_id (one id or several stop ids), a sequence that produced
        one gets the first of them from then on, and generation stops once every sequence has. The model reads at most the last block_size
        tokens. With the cache, the prompt window is encoded once and each step feeds one token;
        once the cache is full (block_size positions), each further step re-encodes the last
        block_size tokens, exactly as without the cache. Same generator seed -> same output
        with and without the cache. Runs in eval mode (restored afterwards).
        """
        if temperature < 0:
            raise PipelineError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise PipelineError(f"top_k must be >= 1, got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise PipelineError(f"top_p must be in (0, 1], got {top_p}")
        was_training = self.training
        self.eval()
        try:
            return self._generate(idx, max_new_tokens, temperature, top_k, top_p, eos_id, generator, use_cache)
        finally:
            self.train(was_training)

    def _generate(self, idx, max_new_tokens, temperature, top_k, top_p, eos_id, generator, use_cache):
        """The decoding loop of `generate`."""
        bs = self.config.block_size
        out = idx
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        stops = None if eos_id is None else torch.tensor(eos_id, device=idx.device).flatten()  # (S,)
        caches: Optional[list[KVCache]] = None
        for _ in range(max_new_tokens):
            if use_cache and caches is None:
                window = out[:, -bs:]
                caches = self._new_caches()
                x = self._hidden(window, torch.arange(window.size(1), device=idx.device), caches=caches)
            elif use_cache and caches[0].pos < bs:
                pos = torch.tensor([caches[0].pos], device=idx.device)
                x = self._hidden(out[:, -1:], pos, is_causal=False, caches=caches)  # one query sees all keys
            else:
                window = out[:, -bs:]
                x = self._hidden(window, torch.arange(window.size(1), device=idx.device))
            logits = self._logits(x[:, -1, :])  # (B, vocab)
            nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B, 1)
            if stops is not None:
                nxt = nxt.masked_fill(done[:, None], int(stops[0]))
                done |= torch.isin(nxt[:, 0], stops)
            out = torch.cat([out, nxt], dim=1)
            if stops is not None and bool(done.all()):
                break
        return out


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
        self.rope = RopeTable(config.n_embd // config.n_head, config.rope_theta, config.block_size) if config.positions == "rope" else None
        self.skip_weights = nn.Parameter(torch.ones(config.n_layer // 2)) if config.unet else None
        self.apply(self._init_weights)
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # projections back into the residual stream
                nn.init.zeros_(p) if config.zero_init else nn.init.normal_(p, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _hidden(self, idx, pos, attn_mask=None, is_causal=True, caches=None) -> torch.Tensor:
        """Final (normed) hidden states (B, T, C) for tokens idx (B, T) at positions pos ((T,) or (B, T))."""
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.rope is None:
            x = x + self.transformer.wpe(pos)
        else:
            rope = self.rope(pos, x.dtype)  # cos, sin: (B or 1, 1, T, hs) each
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

    # ---- Hugging Face ----------------------------------------------------------------------------

    def save_hf(self, path: str | Path, eos_id: Optional[int] = None) -> None:
        """Write a Hugging Face GPT-2 folder (config.json + model.safetensors) atomically.

        eos_id: written as bos/eos_token_id (default: GPT-2's 50256 when the vocabulary has it).
        """
        from safetensors.torch import save_file

        blocker = self.config.hf_blocker()
        if blocker is not None:
            raise PipelineError(f"save_hf: Hugging Face GPT-2 cannot represent {blocker}; export needs GPT-2's own layers")
        c = self.config
        if eos_id is None and c.vocab_size > GPT2_EOS_ID:
            eos_id = GPT2_EOS_ID
        tensors = {name: t.t().contiguous() if name.endswith(HF_CONV1D) else t for name, t in self._tensors().items()}
        hf_config = {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": c.vocab_size,
            "n_positions": c.block_size,
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "n_embd": c.n_embd,
            "n_inner": None,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5,
            "resid_pdrop": c.dropout,
            "embd_pdrop": c.dropout,
            "attn_pdrop": c.dropout,
            "initializer_range": 0.02,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "tie_word_embeddings": c.tie_weights,
            "bos_token_id": eos_id,
            "eos_token_id": eos_id,
        }
        with atomic_dir(path) as tmp:
            save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            write_json(tmp / HF_CONFIG_FILE, hf_config)

    @classmethod
    def from_hf(cls, path: str | Path, map_location="cpu", dropout: Optional[float] = None) -> "GPT":
        """Load a local Hugging Face GPT-2 folder. dropout: override HF's resid_pdrop."""
        path = Path(path)
        if not (path / HF_CONFIG_FILE).is_file():
            raise PipelineError(f"{path / HF_CONFIG_FILE}: not found (not a Hugging Face model folder)")
        hf = json.loads((path / HF_CONFIG_FILE).read_text())
        source = str(path / HF_CONFIG_FILE)
        if hf.get("model_type", "gpt2") != "gpt2":
            raise PipelineError(f"{source}: model_type '{hf.get('model_type')}' is not gpt2")
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise PipelineError(f"{source}: activation_function '{hf['activation_function']}' is not supported (gelu_new)")
        if hf.get("n_inner") not in (None, 4 * hf.get("n_embd", 768)):
            raise PipelineError(f"{source}: n_inner {hf['n_inner']} is not supported (only 4 * n_embd)")
        if abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
            raise PipelineError(f"{source}: layer_norm_epsilon {hf['layer_norm_epsilon']} is not supported (only 1e-5)")
        if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
            raise PipelineError(f"{source}: non-standard attention scaling is not supported")
        config = GPTConfig(
            vocab_size=hf.get("vocab_size", 50257),
            block_size=hf.get("n_positions", 1024),
            n_layer=hf.get("n_layer", 12),
            n_head=hf.get("n_head", 12),
            n_embd=hf.get("n_embd", 768),
            dropout=hf.get("resid_pdrop", 0.1) if dropout is None else dropout,
            bias=True,
            tie_weights=hf.get("tie_word_embeddings", True),
        )
        tensors, weights = _read_hf_tensors(path)
        ours = {}
        for name, t in tensors.items():
            if name.endswith(HF_IGNORED):
                continue
            if name != "lm_head.weight" and not name.startswith("transformer."):
                name = "transformer." + name  # the original OpenAI-converted checkpoints have no prefix
            ours[name] = t.t() if name.endswith(HF_CONV1D) else t
        return cls._from_tensors(config, ours, weights, map_location)

    def _new_caches(self) -> list[KVCache]:
        return [KVCache(self.config.block_size) for _ in range(self.config.n_layer)]


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None) -> torch.Tensor:
    """Pick the next token id (B, 1) from last-position logits (B, vocab)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the likelier tokens; the first is always kept
        sorted_logits = sorted_logits.masked_fill(before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)


def _read_hf_tensors(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Tensors of a HF folder (safetensors or weights-only torch.load, single or sharded) and the file name."""
    from safetensors.torch import load_file

    for name in HF_WEIGHT_FILES:
        file = path / name
        if not file.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(file.read_text())["weight_map"].values()))
            files = [path / shard for shard in shards]
        else:
            files = [file]
        tensors: dict[str, torch.Tensor] = {}
        for f in files:
            if f.suffix == ".safetensors":
                tensors.update(load_file(str(f)))
            else:
                try:
                    tensors.update(torch.load(f, map_location="cpu", weights_only=True))
                except Exception as exc:
                    raise PipelineError(f"{f}: cannot be read as plain tensors ({type(exc).__name__})") from None
        return tensors, str(file)
    raise PipelineError(f"{path}: no {' or '.join(HF_WEIGHT_FILES)} found")


def load_any(path: str | Path, map_location="cpu", dropout: Optional[float] = None) -> nn.Module:
    """Load any model folder: ours (GPT-2 or Llama layout), a Hugging Face one (GPT-2, Llama,
    Qwen2, Mistral) or a LoRA adapter folder (model/lora.py: the base with the adapters merged).
    The Llama side lives in model/llama.py."""
    from model.llama import load_any as load_either

    return load_either(path, map_location, dropout)


def load_gpt2(path: str | Path, map_location="cpu", dropout: Optional[float] = None) -> GPT:
    """Load our GPT-2 checkpoint folder (model_config.json) or a Hugging Face GPT-2 folder (config.json)."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return GPT.load(path, map_location, dropout)
    if (path / HF_CONFIG_FILE).is_file():
        return GPT.from_hf(path, map_location, dropout)
    raise PipelineError(f"{path}: neither a tinyGPT checkpoint ({CONFIG_FILE}) nor a Hugging Face folder ({HF_CONFIG_FILE})")
