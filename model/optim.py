"""The optimizer side, one for pretraining and fine-tuning: AdamW, Muon, the LR schedule, and the step.

`optimizer_step` is the only place where a model learns: set the LRs, forward under autocast and
backward over the micro-batches (DDP reduces gradients on the last one only, FSDP on each), clip, step. It
returns the loss and the gradient norm as tensors on the device, so nothing waits for the host;
`check_finite` reads them back where the caller syncs anyway (the trainer: every `log_interval`).

`train.optimizer: muon` puts the hidden matrices (the Linear weights inside the blocks) under Muon
(`torch.optim.Muon`'s update: Nesterov momentum, then the update orthogonalised by Newton–Schulz)
and everything else (embeddings, the output layer, gains, biases) under AdamW, each with its own
peak LR on the same schedule. Under DDP every rank holds the all-reduced gradient after backward,
so every rank runs the same Muon update on it and the replicas stay identical; nothing is sharded.
Fine-tuning stays on AdamW: its models mostly come pretrained with AdamW (Hugging Face folders), and
Moonlight (Liu et al. 2025, "Muon is Scalable for LLM Training") found Muon fine-tuning of
AdamW-pretrained models no better than AdamW; LoRA's rank-r factors are not the full matrices Muon
is designed for either.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from typing import Callable, Optional, Sequence

import torch

from pipeline.errors import PipelineError

MUON_MOMENTUM_START = 0.85  # Muon's momentum at step 0 when it warms up (modded-nanogpt: 0.85 -> 0.95 over 300 steps)


def lr_scale(step: int, warmup_iters: int, decay_end: int, min_ratio: float) -> float:
    """The schedule as a factor of the peak LR: linear warmup over `warmup_iters` steps, then cosine
    decay to `min_ratio` at step `decay_end`."""
    if step < warmup_iters:
        return (step + 1) / (warmup_iters + 1)
    ratio = min(1.0, (step - warmup_iters) / max(1, decay_end - warmup_iters))
    return min_ratio + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (1.0 - min_ratio)


def warmup_cosine(step: int, warmup_iters: int, decay_end: int, lr: float, min_lr: float) -> float:
    """`lr_scale` in absolute terms: warmup to `lr`, cosine decay to `min_lr` at `decay_end`."""
    return lr * lr_scale(step, warmup_iters, decay_end, min_lr / lr)


def orthogonalise(G: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype) -> torch.Tensor:
    """Muon's quintic Newton–Schulz iteration on a batch of matrices G (N, r, c) with r <= c, in
    `dtype`: the same polynomial as torch.optim.Muon's, one batched matmul per term instead of one
    per matrix. Returns (N, r, c) in `dtype`."""
    a, b, c = coefficients
    X = G.to(dtype)
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= 1
    for _ in range(steps):
        gram = X @ X.mT  # (N, r, r)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        X = torch.baddbmm(X, poly, X, beta=a)
    return X


def orthogonalisation_dtype(device: torch.device) -> torch.dtype:
    """bf16 where its matmuls are fast (CUDA, CPUs with AMX tiles), else fp32.

    Measured on 2-core CPUs (bench/README.md, "Muon"): with AMX, bf16 Newton–Schulz took 0.33-0.54x the
    time of fp32; on an AMD EPYC without AMX a bf16 matmul of these shapes took 3x fp32's."""
    if device.type == "cuda":
        return torch.bfloat16
    try:
        return torch.bfloat16 if torch.cpu.get_capabilities().get("amx_bf16") else torch.float32
    except Exception:  # get_capabilities is x86-only
        return torch.float32


class Muon(torch.optim.Muon):
    """torch.optim.Muon whose orthogonalisation runs batched over the matrices of one shape, in
    `ns_dtype` (`orthogonalisation_dtype`: torch's own is bf16, one matrix at a time).

    A param group may set `parts`: how many matrices a parameter stacks along its rows (a fused
    q/k/v projection: 3); each part is orthogonalised, and its LR adjusted, as a matrix of its own.
    State, hyperparameters and the LR adjustment are torch's (`momentum_buffer` per parameter).
    """

    def __init__(self, params, ns_dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        from torch.optim._muon import _adjust_lr

        buckets = defaultdict(list)  # (rows, cols, NS settings) -> [(param, group, matrices, transposed)]
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            bufs = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad)) for p in params]
            torch._foreach_lerp_(bufs, grads, 1 - group["momentum"])
            updates = torch._foreach_lerp(grads, bufs, group["momentum"]) if group["nesterov"] else bufs
            parts = group.get("parts", 1)
            for p, update in zip(params, updates):
                mats = update.view(parts, p.size(0) // parts, p.size(1))  # (parts, r, c)
                transposed = mats.size(1) > mats.size(2)
                key = (*sorted(mats.shape[1:]), group["ns_coefficients"], group["ns_steps"], group["eps"])
                buckets[key].append((p, group, mats.mT if transposed else mats, transposed))
        params, outs, decays, rates = [], [], [], []
        for (_, _, coefficients, steps, eps), items in buckets.items():
            ortho = orthogonalise(torch.cat([mats for _, _, mats, _ in items]), coefficients, steps, eps, self.ns_dtype)
            for (p, group, mats, transposed), o in zip(items, ortho.split([len(m) for _, _, m, _ in items])):
                lr, parts = group["lr"], group.get("parts", 1)
                params.append(p)
                outs.append((o.mT if transposed else o).reshape(p.shape).to(p.dtype))
                decays.append(1 - lr * group["weight_decay"])
                rates.append(-_adjust_lr(lr, group["adjust_lr_fn"], torch.Size((p.size(0) // parts, p.size(1)))))
        if params:
            torch._foreach_mul_(params, decays)
            torch._foreach_mul_(outs, rates)
            torch._foreach_add_(params, outs)


class Optimizers:
    """The optimizers of one model, stepped as one: AdamW alone, or Muon and AdamW side by side.

    Each param group keeps its peak LR as `peak_lr`; `schedule(scale, step)` sets every group's LR
    to peak x scale and warms up Muon's momentum. `state_dict` holds every optimizer's state."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer], muon_momentum: float = 0.95, momentum_warmup: int = 0):
        self.optimizers = optimizers
        self.muon_momentum, self.momentum_warmup = muon_momentum, momentum_warmup
        for group in self.param_groups:
            group["peak_lr"] = group["lr"]

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers.values() for group in opt.param_groups]

    def schedule(self, scale: float, step: int) -> None:
        for group in self.param_groups:
            group["lr"] = group["peak_lr"] * scale
        if "muon" in self.optimizers:
            warm = min(1.0, step / self.momentum_warmup) if self.momentum_warmup else 1.0
            for group in self.optimizers["muon"].param_groups:
                group["momentum"] = (1 - warm) * MUON_MOMENTUM_START + warm * self.muon_momentum

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.optimizers):
            raise PipelineError(f"checkpoint holds optimizer state for {', '.join(sorted(state))}, this run uses {', '.join(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def adamw_groups(params: Sequence[torch.nn.Parameter], weight_decay: float, lr: float) -> list[dict]:
    """AdamW groups: weight decay on matrices and embeddings (dim >= 2) only."""
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, "lr": lr},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr": lr},
    ]


def _adamw(groups: list[dict], betas: tuple[float, float], device: torch.device) -> torch.optim.AdamW:
    """Fused kernels (one per parameter on CPU and CUDA; on a small model the per-tensor update was
    ~4% of a CPU step)."""
    return torch.optim.AdamW([g for g in groups if g["params"]], betas=betas, fused=device.type in ("cpu", "cuda"))


def adamw(model: torch.nn.Module, weight_decay: float, lr: float, betas: tuple[float, float], device: torch.device) -> Optimizers:
    """AdamW for every trainable parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    return Optimizers({"adamw": _adamw(adamw_groups(params, weight_decay, lr), betas, device)})


def muon(model: torch.nn.Module, cfg, device: torch.device) -> Optimizers:
    """Muon (`cfg.muon_lr`, `cfg.muon_momentum`, `cfg.muon_weight_decay`) for the model's
    `hidden_matrices()`, AdamW (`cfg.lr`, `cfg.weight_decay`, betas) for the other parameters.
    `cfg`: a TrainConfig."""
    matrices = model.hidden_matrices()
    chosen = {id(p) for p, _ in matrices}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
    groups = defaultdict(list)
    for p, parts in matrices:
        groups[parts].append(p)
    muon_opt = Muon([{"params": ps, "parts": parts} for parts, ps in sorted(groups.items())], ns_dtype=orthogonalisation_dtype(device),
                    lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.muon_weight_decay)
    adamw_opt = _adamw(adamw_groups(rest, cfg.weight_decay, cfg.lr), (cfg.beta1, cfg.beta2), device)
    return Optimizers({"muon": muon_opt, "adamw": adamw_opt}, cfg.muon_momentum, cfg.muon_momentum_warmup)


def optimizer_step(
    runner: torch.nn.Module,
    optimizer: Optimizers,
    micro_batches: Sequence[dict[str, torch.Tensor]],
    scale: float,
    step: int,
    grad_clip: float,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step at LR factor `scale` over `micro_batches` (tensors on the device: inputs,
    targets, loss_mask, optionally segment_ids); returns this rank's mean loss and the gradient norm
    (0 when not clipping) as 0-d float32 tensors on the device, without waiting for them."""
    optimizer.schedule(scale, step)
    device = next(iter(micro_batches[0].values())).device
    loss_sum = torch.zeros((), device=device)
    for i, batch in enumerate(micro_batches):
        with gradient_sync(runner, last=i == len(micro_batches) - 1):
            with autocast():
                _, loss = runner(batch["inputs"], targets=batch["targets"], loss_mask=batch["loss_mask"],
                                 segment_ids=batch.get("segment_ids"))
            (loss / len(micro_batches)).backward()
        loss_sum += loss.detach().float()
    grad_norm = torch.zeros((), device=device)
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(runner.parameters(), grad_clip)
        grad_norm = (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).float()  # FSDP: a DTensor
    optimizer.step()
    optimizer.zero_grad()
    return loss_sum / len(micro_batches), grad_norm


def gradient_sync(runner: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """Whether this backward reduces gradients over the processes: under DDP only on the last
    micro-batch (`no_sync()` before it: the gradient accumulates locally and is reduced once). One
    process has nothing to reduce, and FSDP2 (no `no_sync`) reduces every micro-batch on purpose: its
    gradients then accumulate as shards, where waiting would hold a whole unsharded fp32 gradient on
    every process until the last micro-batch, the memory sharding is there to save."""
    return runner.no_sync() if not last and hasattr(runner, "no_sync") else contextlib.nullcontext()


def check_finite(loss: float, grad_norm: float, where: str, first_step: int, last_step: int, lr: Optional[float] = None) -> None:
    """A one-line PipelineError naming `where.lr` when a loss or gradient norm of steps
    first_step..last_step (1-based) was not finite."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    what, value = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", grad_norm)
    steps = f"at step {last_step}" if first_step == last_step else f"in steps {first_step}-{last_step}"
    at_lr = f" (lr {lr:.3g})" if lr is not None else ""
    raise PipelineError(f"{where}: {what} is {value} {steps}{at_lr}; lower {where}.lr or check the data")
