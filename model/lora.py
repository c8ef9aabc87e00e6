"""LoRA (Hu et al. 2021): low-rank adapters on chosen Linear layers, everything else frozen.

A wrapped layer computes `W x + b + B A dropout(x) * alpha / rank`, with A (rank, in) random
(Kaiming-uniform, as nn.Linear) and B (out, rank) zero, so training starts from the base model
exactly. Only A and B train. Loading an adapter folder (model/folders.py `read_adapter`) folds
`B A * alpha / rank` into W, so a loaded model is an ordinary GPT / Llama.

Layers are chosen by name suffix (`c_attn` matches `transformer.h.0.attn.c_attn`; `attn.c_proj`
only the attention's c_proj). A wrapped layer keeps its `weight` and `bias` under the same names.

Adapter folders (the A and B tensors and the settings) are read and written by model/folders.py.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.errors import PipelineError


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: y = x W^T + b + (dropout(x) A^T B^T) * alpha / rank."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # (out, in), frozen
        self.bias = base.bias  # (out,) or None, frozen
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.lora_A = nn.Parameter(base.weight.new_empty(rank, base.in_features))  # (r, in)
        self.lora_B = nn.Parameter(base.weight.new_zeros(base.out_features, rank))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)  # (B, T, out)
        h = F.linear(self.dropout(x), self.lora_A)  # (B, T, r)
        return y + F.linear(h, self.lora_B) * self.scale  # (B, T, out)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha}"


def matches(name: str, targets: Sequence[str]) -> bool:
    """Whether module `name` ends with one of the targets, at a dot boundary."""
    return any(name == t or name.endswith("." + t) for t in targets)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float, targets: Sequence[str],
               where: str = "lora.targets") -> list[str]:
    """Wrap every nn.Linear whose name matches a target in a LoRALinear and freeze all other
    parameters; return the wrapped names. One-line errors (naming `where`) when nothing matches or a
    target is tied to the embedding (its merge would change the embedding too)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and matches(n, targets)]
    if not names:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise PipelineError(f"{where}: no Linear layer of the model matches {list(targets)} (its Linear layers: {', '.join(linear)})")
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    tied = [n for n in names if id(model.get_submodule(n).weight) in embeddings]
    if tied:
        raise PipelineError(f"{where}: '{tied[0]}' shares its weight with the token embedding (tie_weights); leave it out")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        base = model.get_submodule(name)
        _set_module(model, name, LoRALinear(base, rank, alpha, dropout).train(base.training))
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The wrapped layers by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def adapter_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """What an adapter folder holds (model/folders.py `write_adapter`): the A and B tensors of every
    wrapped layer (`<layer>.lora_A` (r, in), `<layer>.lora_B` (out, r), on the CPU) and the settings."""
    layers = lora_layers(model)
    if not layers:
        raise PipelineError("the model has no LoRA layers to save")
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{name}.lora_A"] = layer.lora_A.detach().cpu().contiguous()
        tensors[f"{name}.lora_B"] = layer.lora_B.detach().cpu().contiguous()
    first = next(iter(layers.values()))
    return tensors, {"rank": first.rank, "alpha": first.alpha, "dropout": first.dropout.p, "modules": list(layers)}


def trainable_params(model: nn.Module) -> int:
    """Parameters the optimizer updates (requires_grad), shared ones once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
