"""LoRA (Hu et al. 2021): low-rank adapters on chosen Linear layers, everything else frozen.

A wrapped layer computes `W x + b + B A dropout(x) * alpha / rank`, with A (rank, in) random
(Kaiming-uniform, as nn.Linear) and B (out, rank) zero, so training starts from the base model
exactly. Only A and B train. `merge_lora` folds `B A * alpha / rank` into W and puts plain
nn.Linear layers back, so a merged model is an ordinary GPT / Llama.

Layers are chosen by name suffix (`c_attn` matches `transformer.h.0.attn.c_attn`; `attn.c_proj`
only the attention's c_proj). A wrapped layer keeps its `weight` and `bias` under the same names.

An adapter folder holds `adapter.safetensors` (only the A and B tensors) and `adapter_config.json`
(the base checkpoint folder, relative to the adapter folder when they sit side by side, and the settings). `load_adapter`
(which `load_any` calls for such folders) loads the base model, applies the adapters and merges them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.errors import PipelineError
from pipeline.io import write_json

ADAPTER_FILE = "adapter.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
FORMAT = "tinygpt-lora-v1"


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

    def delta(self) -> torch.Tensor:
        """The update to W, (out, in) = B A * alpha / rank."""
        return (self.lora_B @ self.lora_A) * self.scale

    def merged(self) -> nn.Linear:
        """A plain nn.Linear with the update folded into its weight."""
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        layer.weight = nn.Parameter((self.weight + self.delta()).detach())
        if self.bias is not None:
            layer.bias = nn.Parameter(self.bias.detach())
        return layer

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


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight, in place; returns the model as after loading it:
    plain nn.Linear layers, every parameter trainable."""
    for name, layer in lora_layers(model).items():
        _set_module(model, name, layer.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters alone: `<layer>.lora_A` (r, in) and `<layer>.lora_B` (out, r), on the CPU."""
    out = {}
    for name, layer in lora_layers(model).items():
        out[f"{name}.lora_A"] = layer.lora_A.detach().cpu().contiguous()
        out[f"{name}.lora_B"] = layer.lora_B.detach().cpu().contiguous()
    return out


def trainable_params(model: nn.Module) -> int:
    """Parameters the optimizer updates (requires_grad), shared ones once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_adapter(model: nn.Module, folder: str | Path, base: str | Path, final_folder: Optional[str | Path] = None) -> None:
    """Write adapter.safetensors + adapter_config.json into an existing folder (not atomic). `base`
    (the checkpoint the adapters were trained on) is stored relative to `final_folder` (default: folder)."""
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise PipelineError("save_adapter: the model has no LoRA layers")
    first = next(iter(layers.values()))
    folder = Path(folder)
    save_file(adapter_tensors(model), str(folder / ADAPTER_FILE), metadata={"format": "pt"})
    write_json(folder / ADAPTER_CONFIG_FILE, {
        "format": FORMAT,
        "base": base_reference(Path(base), Path(final_folder or folder)),
        "rank": first.rank,
        "alpha": first.alpha,
        "dropout": first.dropout.p,
        "modules": list(layers),
    })


def base_reference(base: Path, adapter_folder: Path) -> str:
    """The base folder relative to the adapter folder when they share a parent folder (so both can
    move together, as data/model and data/finetuned), else its absolute path."""
    base, adapter_folder = base.resolve(), adapter_folder.resolve()
    try:
        shared = Path(os.path.commonpath([base, adapter_folder]))
    except ValueError:  # another drive
        return str(base)
    return os.path.relpath(base, adapter_folder) if shared != Path(shared.anchor) else str(base)


def read_adapter_config(folder: Path) -> dict:
    """adapter_config.json, checked: one-line errors name the file and the key."""
    path = folder / ADAPTER_CONFIG_FILE
    try:
        cfg = json.loads(path.read_text())
    except ValueError as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise PipelineError(f"{path}: must hold a JSON object, got {type(cfg).__name__}")
    kinds = {"base": (str, "a folder path"), "rank": (int, "an integer"), "alpha": ((int, float), "a number"),
             "dropout": ((int, float), "a number"), "modules": (list, "a list of layer names")}
    for key, (kind, what) in kinds.items():
        if not isinstance(cfg.get(key), kind) or isinstance(cfg.get(key), bool):
            raise PipelineError(f"{path}: '{key}' must be {what}, got {json.dumps(cfg.get(key))}")
    if cfg["rank"] < 1 or not cfg["modules"]:
        raise PipelineError(f"{path}: 'rank' must be >= 1 and 'modules' must name at least one layer")
    return cfg


def load_adapter(folder: str | Path, map_location="cpu", dropout: Optional[float] = None) -> nn.Module:
    """Load an adapter folder: its base model (any format load_any reads) with the adapters merged in."""
    from safetensors.torch import load_file

    from model.llama import load_any

    folder = Path(folder)
    cfg = read_adapter_config(folder)
    base = Path(cfg["base"]) if os.path.isabs(cfg["base"]) else folder / cfg["base"]
    if not base.is_dir():
        raise PipelineError(f"{folder / ADAPTER_CONFIG_FILE}: base model folder {base} not found")
    if not (folder / ADAPTER_FILE).is_file():
        raise PipelineError(f"{folder / ADAPTER_FILE}: not found")
    model = load_any(base, map_location, dropout)
    names = apply_lora(model, cfg["rank"], cfg["alpha"], 0.0, cfg["modules"], where=str(folder / ADAPTER_CONFIG_FILE))
    if set(names) != set(cfg["modules"]):
        extra = sorted(set(names) ^ set(cfg["modules"]))[0]
        raise PipelineError(f"{folder / ADAPTER_CONFIG_FILE}: layer '{extra}' does not match the base model in {base}")
    load_adapter_tensors(model, load_file(str(folder / ADAPTER_FILE)), str(folder / ADAPTER_FILE))
    return merge_lora(model)


def load_adapter_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy saved A and B tensors into the model's LoRA layers, checking names and shapes first."""
    expected = {name: t for name, t in model.state_dict().items() if name.endswith((".lora_A", ".lora_B"))}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        what = f"missing tensor '{missing[0]}'" if missing else f"unexpected tensor '{unexpected[0]}'"
        raise PipelineError(f"{source}: {what} (the adapters do not match their config)")
    for name, want in expected.items():
        if tensors[name].shape != want.shape:
            raise PipelineError(f"{source}: tensor '{name}' has shape {tuple(tensors[name].shape)}, the base model implies {tuple(want.shape)}")
    with torch.no_grad():
        for name, want in expected.items():
            want.copy_(tensors[name])
