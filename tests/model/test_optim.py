"""The one optimizer step of pretraining and fine-tuning: AdamW groups, accumulation, clipping, refusals."""

from __future__ import annotations

import pytest
import torch

from model.gpt import GPT, GPTConfig
from model.optim import adamw, check_finite, optimizer_step, warmup_cosine
from model.runtime import autocast_for
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
    args = dict(scale=1.0, step=0, grad_clip=1.0, autocast=autocast_for(CPU))
    loss_whole, norm_whole = optimizer_step(whole, adamw(whole, 0.1, 1e-2, (0.9, 0.99), CPU), [batch(rows)], **args)
    loss_parts, norm_parts = optimizer_step(parts, adamw(parts, 0.1, 1e-2, (0.9, 0.99), CPU), [batch(rows[:4]), batch(rows[4:])], **args)
    assert isinstance(loss_whole, torch.Tensor) and loss_whole.dim() == 0, "values stay on the device"
    assert float(loss_parts) == pytest.approx(float(loss_whole), rel=1e-5) and float(norm_parts) == pytest.approx(float(norm_whole), rel=1e-4)
    for a, b in zip(whole.parameters(), parts.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert all(p.grad is None for p in whole.parameters()), "gradients are cleared after the step"


def test_the_step_sets_the_lr_and_clips():
    model = tiny()
    opt = adamw(model, 0.0, 1.0, (0.9, 0.99), CPU)
    rows = torch.randint(0, 37, (4, 17), generator=torch.Generator().manual_seed(2))
    _, norm = optimizer_step(model, opt, [batch(rows)], 3e-3, 0, 1e-3, autocast_for(CPU))
    assert all(g["lr"] == 3e-3 and g["peak_lr"] == 1.0 for g in opt.param_groups) and float(norm) > 1e-3  # the norm before clipping


@pytest.mark.parametrize("where", ["train", "finetune"])
def test_non_finite_values_stop_with_one_line_naming_the_section_and_steps(where):
    model = tiny()
    with torch.no_grad():
        model.lm_head.weight.fill_(float("inf"))
    rows = torch.randint(0, 37, (2, 17), generator=torch.Generator().manual_seed(3))
    loss, norm = optimizer_step(model, adamw(model, 0.0, 1e-3, (0.9, 0.99), CPU), [batch(rows)], 1.0, 7, 1.0, autocast_for(CPU))
    with pytest.raises(PipelineError, match=rf"{where}: (loss|gradient norm) is (nan|inf) at step 8 \(lr 0.001\); lower {where}.lr") as err:
        check_finite(float(loss), float(norm), where, 8, 8, 1e-3)
    assert "\n" not in str(err.value)
    with pytest.raises(PipelineError, match=rf"{where}: gradient norm is inf in steps 11-20; lower {where}.lr"):
        check_finite(2.0, float("inf"), where, 11, 20)
    check_finite(2.0, 0.5, where, 1, 1)


def test_warmup_cosine():
    assert warmup_cosine(0, 10, 110, 1.0, 0.1) == pytest.approx(1 / 11)
    assert warmup_cosine(10, 10, 110, 1.0, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110, 1.0, 0.1) == pytest.approx(0.55)
    assert warmup_cosine(500, 10, 110, 1.0, 0.1) == pytest.approx(0.1)


# ---- Muon ------------------------------------------------------------------------------------------

from model.optim import MUON_MOMENTUM_START, Muon, muon, orthogonalise  # noqa: E402
from model.config import TrainConfig  # noqa: E402


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = tiny()
    opt = muon(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02), CPU)
    muon_params = [p for g in opt.optimizers["muon"].param_groups for p in g["params"]]
    adamw_params = [p for g in opt.optimizers["adamw"].param_groups for p in g["params"]]
    assert {id(p) for p, _ in model.hidden_matrices()} == {id(p) for p in muon_params}
    assert all(p.dim() == 2 for p in muon_params) and model.transformer.wte.weight in adamw_params
    assert len(muon_params) + len(adamw_params) == len(list(model.parameters()))
    assert sorted(g["parts"] for g in opt.optimizers["muon"].param_groups) == [1, 3], "fused q/k/v: 3 matrices"
    assert {g["peak_lr"] for g in opt.optimizers["muon"].param_groups} == {0.02}
    assert {g["peak_lr"] for g in opt.optimizers["adamw"].param_groups} == {1e-3}


def test_our_muon_step_is_torchs_update():
    """One matrix, bf16 Newton–Schulz like torch's: the same step as torch.optim.Muon (up to the
    batched matmul's rounding); fp32 orthogonalisation is closer to exact."""
    torch.manual_seed(0)
    ours_w = torch.nn.Parameter(torch.randn(24, 16))
    torch_w = torch.nn.Parameter(ours_w.detach().clone())
    ours = Muon([ours_w], ns_dtype=torch.bfloat16, lr=0.05, weight_decay=0.1)
    reference = torch.optim.Muon([torch_w], lr=0.05, weight_decay=0.1)
    for step in range(3):
        grad = torch.randn(24, 16, generator=torch.Generator().manual_seed(step))
        ours_w.grad, torch_w.grad = grad.clone(), grad.clone()
        ours.step()
        reference.step()
    torch.testing.assert_close(ours_w.detach(), torch_w.detach(), atol=2e-3, rtol=0)
    assert torch.equal(ours.state[ours_w]["momentum_buffer"], reference.state[torch_w]["momentum_buffer"])


def test_orthogonalise_flattens_the_singular_values_per_matrix():
    G = torch.randn(3, 8, 20, generator=torch.Generator().manual_seed(1)) * torch.tensor([1.0, 10.0, 1e-3])[:, None, None]
    coefficients = (3.4445, -4.7750, 2.0315)
    out = orthogonalise(G, coefficients, 5, 1e-7, torch.float32)
    singular = torch.linalg.svdvals(out)  # (3, 8)
    assert singular.min() > 0.5 and singular.max() < 1.3, "Muon's quintic lands in about [0.7, 1.2] whatever the scale"
    for i in range(3):
        torch.testing.assert_close(out[i], orthogonalise(G[i : i + 1], coefficients, 5, 1e-7, torch.float32)[0])


def test_fused_matrices_are_orthogonalised_part_by_part():
    torch.manual_seed(0)
    fused = torch.nn.Parameter(torch.randn(3 * 8, 8))
    parts = [torch.nn.Parameter(t.detach().clone()) for t in fused.detach().split(8)]
    one = Muon([{"params": [fused], "parts": 3}], ns_dtype=torch.float32, lr=0.02, weight_decay=0.0)
    three = Muon([{"params": parts}], ns_dtype=torch.float32, lr=0.02, weight_decay=0.0)
    grad = torch.randn(24, 8)
    fused.grad = grad.clone()
    for p, g in zip(parts, grad.split(8)):
        p.grad = g.clone()
    one.step()
    three.step()
    torch.testing.assert_close(fused.detach(), torch.cat([p.detach() for p in parts]), atol=1e-6, rtol=0)


def test_momentum_warmup_and_the_schedule_set_every_group():
    model = tiny()
    opt = muon(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02, muon_momentum=0.95, muon_momentum_warmup=10), CPU)
    opt.schedule(0.5, 0)
    assert all(g["momentum"] == pytest.approx(MUON_MOMENTUM_START) for g in opt.optimizers["muon"].param_groups)
    assert {g["lr"] for g in opt.param_groups} == {0.01, 5e-4}
    opt.schedule(1.0, 5)
    assert all(g["momentum"] == pytest.approx(0.9) for g in opt.optimizers["muon"].param_groups)
    opt.schedule(1.0, 50)
    assert all(g["momentum"] == pytest.approx(0.95) for g in opt.optimizers["muon"].param_groups)


def test_muon_state_round_trips_and_refuses_an_adamw_checkpoint():
    model = tiny()
    rows = torch.randint(0, 37, (4, 17), generator=torch.Generator().manual_seed(2))
    cfg = TrainConfig(optimizer="muon")
    opt = muon(model, cfg, CPU)
    optimizer_step(model, opt, [batch(rows)], 1.0, 0, 1.0, autocast_for(CPU))
    state = opt.state_dict()
    assert set(state) == {"muon", "adamw"}
    again = muon(model, cfg, CPU)
    again.load_state_dict(state)
    for a, b in zip(opt.optimizers["muon"].state.values(), again.optimizers["muon"].state.values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    with pytest.raises(PipelineError, match="optimizer state for adamw, this run uses muon, adamw"):
        again.load_state_dict(adamw(model, 0.1, 1e-3, (0.9, 0.99), CPU).state_dict())
