"""What every network here shares: the `Decoder` interface (the loss with document masking, the
output layer's soft cap, the matrices Muon updates), the KV cache, token sampling and the decoding
loop. The networks (model/gpt.py, model/llama.py) subclass `Decoder`; their folders on disk are
model/folders.py's.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.layers import document_mask, flex_document_mask, resolve_doc_mask_kernel, segment_positions
from pipeline.errors import PipelineError


class KVCache:
    """Keys and values of the positions one attention layer has already seen.

    Allocated on first use with the incoming keys' shape, dtype and device (so autocast works).
    """

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.k: Optional[torch.Tensor] = None  # (B, nh, max_len, hs)
        self.v: Optional[torch.Tensor] = None
        self.pos = 0  # positions filled so far

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new (B, nh, T, hs) keys/values; return all keys/values so far, (B, nh, pos, hs)."""
        B, nh, T, hs = k.shape
        if self.k is None:
            self.k = k.new_zeros(B, nh, self.max_len, hs)
            self.v = v.new_zeros(B, nh, self.max_len, hs)
        self.k[:, :, self.pos : self.pos + T] = k
        self.v[:, :, self.pos : self.pos + T] = v
        self.pos += T
        return self.k[:, :, : self.pos], self.v[:, :, : self.pos]


class GrowingKVCache(KVCache):
    """A KVCache that grows as it fills (doubling, up to max_len) instead of reserving max_len at once:
    Hugging Face models declare contexts of up to 131072 positions, far more than a generation uses."""

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, nkv, T, hs = k.shape
        if self.k is None:
            self.k, self.v = k.new_zeros(B, nkv, 0, hs), v.new_zeros(B, nkv, 0, hs)
        if self.pos + T > self.k.size(2):
            grow = min(self.max_len, max(self.pos + T, 2 * self.k.size(2))) - self.k.size(2)
            self.k = F.pad(self.k, (0, 0, 0, grow))  # (B, nkv, size, hs)
            self.v = F.pad(self.v, (0, 0, 0, grow))
        return super().append(k, v)


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


def init_normal(module: nn.Module) -> None:
    """GPT-2's initialisation: Linear and Embedding weights N(0, 0.02), biases zero."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class Decoder(nn.Module):
    """A decoder-only language model. A subclass sets CONFIG (its config class), ARCH (the "arch"
    of our model_config.json), EMBEDDING (the token embedding's parameter name, which a tied output
    layer shares) and FUSED (Linear layers that stack several matrices, by name suffix), and defines
    `config`, `lm_head`, `blocks` (the transformer blocks, what FSDP shards one by one), `_hidden`,
    `_new_caches`, `num_params`, `flops_per_token` and, if it has computed buffers, `fresh_buffers`.

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

    def fresh_buffers(self, device) -> dict[str, torch.Tensor]:
        """The computed (non-persistent) buffers, by name, built on `device`: what a model built on
        the meta device and loaded from a checkpoint needs besides its weights. None by default."""
        return {}

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
        one gets the first of them from then on, and generation stops once every sequence has. The
        model reads at most the last block_size tokens. With the cache, the prompt window is encoded
        once and each step feeds one token; once the cache is full (block_size positions), each
        further step re-encodes the last block_size tokens, exactly as without the cache. Same
        generator seed -> same output with and without the cache. Runs in eval mode (restored afterwards).
        """
        steps = list(self.stream(idx, max_new_tokens, temperature, top_k, top_p, eos_id, generator, use_cache))
        return torch.cat([idx, *steps], dim=1)

    @torch.no_grad()  # on the generator itself: gradients stay off while it runs, not in its reader between steps
    def stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eos_id=None, generator=None,
               use_cache=True) -> Iterator[torch.Tensor]:
        """`generate`, one step at a time: yields each step's next tokens (B, 1) as they come."""
        if temperature < 0:
            raise PipelineError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise PipelineError(f"top_k must be >= 1, got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise PipelineError(f"top_p must be in (0, 1], got {top_p}")
        was_training = self.training
        self.eval()
        try:
            yield from self._steps(idx, max_new_tokens, temperature, top_k, top_p, eos_id, generator, use_cache)
        finally:
            self.train(was_training)

    def _steps(self, idx, max_new_tokens, temperature, top_k, top_p, eos_id, generator, use_cache) -> Iterator[torch.Tensor]:
        """The decoding loop of `stream`."""
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
            yield nxt
            if stops is not None and bool(done.all()):
                break
