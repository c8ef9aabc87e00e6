"""The optimizer side, one for pretraining and fine-tuning: AdamW, the LR schedule, and the step.

`optimizer_step` is the only place where a model learns: set the LR, forward under autocast and
backward over the micro-batches (DDP synchronises gradients on the last one only), clip, check
that loss and gradient norm are finite, step.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Sequence

import torch

from model.runtime import Dist, all_reduce_sum
from pipeline.errors import PipelineError


def warmup_cosine(step: int, warmup_iters: int, decay_end: int, lr: float, min_lr: float) -> float:
    """Linear warmup to `lr` over `warmup_iters` steps, then cosine decay to `min_lr` at step `decay_end`."""
    if step < warmup_iters:
        return lr * (step + 1) / (warmup_iters + 1)
    ratio = min(1.0, (step - warmup_iters) / max(1, decay_end - warmup_iters))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def adamw(model: torch.nn.Module, weight_decay: float, lr: float, betas: tuple[float, float], device: torch.device):
    """AdamW with weight decay on matrices and embeddings (dim >= 2) only, in fused kernels (one per
    parameter on CPU and CUDA; on a small model the per-tensor update was ~4% of a CPU step)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=device.type in ("cpu", "cuda"))


def optimizer_step(
    runner: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[dict[str, torch.Tensor]],
    lr: float,
    grad_clip: float,
    autocast: Callable[[], contextlib.AbstractContextManager],
    d: Dist,
    where: str,
    step: int,
) -> tuple[float, float]:
    """One optimizer step over `micro_batches` (tensors on the device: inputs, targets, loss_mask,
    optionally segment_ids); returns the mean loss and the gradient norm, averaged over ranks.

    A non-finite loss or gradient norm stops with a one-line PipelineError naming `where.lr`.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    device = next(iter(micro_batches[0].values())).device
    loss_sum = torch.zeros((), device=device)
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with runner.no_sync() if d.world > 1 and not last else contextlib.nullcontext():
            with autocast():
                _, loss = runner(batch["inputs"], targets=batch["targets"], loss_mask=batch["loss_mask"],
                                 segment_ids=batch.get("segment_ids"))
            (loss / len(micro_batches)).backward()
        loss_sum += loss.detach().float()
    stats = torch.stack([loss_sum / len(micro_batches), torch.zeros((), device=device)])
    if grad_clip > 0:
        stats[1] = torch.nn.utils.clip_grad_norm_(runner.parameters(), grad_clip)
    loss_value, grad_norm = (all_reduce_sum(stats, d) / d.world).tolist()
    if not math.isfinite(loss_value) or not math.isfinite(grad_norm):
        what, value = ("loss", loss_value) if not math.isfinite(loss_value) else ("gradient norm", grad_norm)
        raise PipelineError(f"{where}: {what} is {value} at step {step + 1} (lr {lr:.3g}); lower {where}.lr or check the data")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_value, grad_norm
