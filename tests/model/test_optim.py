"""The one optimizer step of pretraining and fine-tuning: AdamW groups, accumulation, clipping, refusals."""

from __future__ import annotations

import pytest
import torch

from model.gpt import GPT, GPTConfig
from model.optim import adamw, optimizer_step, warmup_cosine
from model.runtime import Dist, autocast_for
from pipeline.errors import PipelineError

CPU = torch.device("cpu")


def tiny(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32))


def batch(rows: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"inputs": rows[:, :-1], "targets": rows[:, 1:], "loss_mask": torch.ones_like(rows[:, 1:], dtype=torch.bool)}


def test_adamw_decays_only_matrices():
    model = tiny()
    opt = adamw(model, weight_decay=0.1, lr=1e-3, betas=(0.9, 0.95), device=CPU)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == model.num_params(non_embedding=False)


def test_accumulated_micro_batches_equal_one_batch():
    rows = torch.randint(0, 37, (8, 17), generator=torch.Generator().manual_seed(1))
    whole, parts = tiny(), tiny()
    args = dict(lr=1e-2, grad_clip=1.0, autocast=autocast_for(CPU), d=Dist(), where="train", step=0)
    loss_whole, norm_whole = optimizer_step(whole, adamw(whole, 0.1, 1e-2, (0.9, 0.99), CPU), [batch(rows)], **args)
    loss_parts, norm_parts = optimizer_step(parts, adamw(parts, 0.1, 1e-2, (0.9, 0.99), CPU), [batch(rows[:4]), batch(rows[4:])], **args)
    assert loss_parts == pytest.approx(loss_whole, rel=1e-5) and norm_parts == pytest.approx(norm_whole, rel=1e-4)
    for a, b in zip(whole.parameters(), parts.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert all(p.grad is None for p in whole.parameters()), "gradients are cleared after the step"


def test_the_step_sets_the_lr_and_clips():
    model = tiny()
    opt = adamw(model, 0.0, 1.0, (0.9, 0.99), CPU)
    rows = torch.randint(0, 37, (4, 17), generator=torch.Generator().manual_seed(2))
    _, norm = optimizer_step(model, opt, [batch(rows)], 3e-3, 1e-3, autocast_for(CPU), Dist(), "train", 0)
    assert all(g["lr"] == 3e-3 for g in opt.param_groups) and norm > 1e-3  # the norm before clipping


@pytest.mark.parametrize("where", ["train", "finetune"])
def test_non_finite_values_stop_with_one_line_naming_the_section(where):
    model = tiny()
    with torch.no_grad():
        model.lm_head.weight.fill_(float("inf"))
    rows = torch.randint(0, 37, (2, 17), generator=torch.Generator().manual_seed(3))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(PipelineError, match=rf"{where}: (loss|gradient norm) is (nan|inf) at step 8 .*lower {where}.lr") as err:
        optimizer_step(model, adamw(model, 0.0, 1e-3, (0.9, 0.99), CPU), [batch(rows)], 1e-3, 1.0, autocast_for(CPU), Dist(), where, 7)
    assert "\n" not in str(err.value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "no step is taken"


def test_warmup_cosine():
    assert warmup_cosine(0, 10, 110, 1.0, 0.1) == pytest.approx(1 / 11)
    assert warmup_cosine(10, 10, 110, 1.0, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110, 1.0, 0.1) == pytest.approx(0.55)
    assert warmup_cosine(500, 10, 110, 1.0, 0.1) == pytest.approx(0.1)
