"""The GPT model: config checks, masking, loss, training, the layer switches, accounting."""

import math

import pytest
import torch

from model.config import MODEL_PRESETS, ModelConfig
from model.folders import load_any
from model.gpt import GPT, GPTConfig
from model.layers import segment_positions
from model.optim import adamw
from pipeline.errors import PipelineError
from tests.helpers import save_model


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32)
    cfg.update(overrides)
    return GPT(GPTConfig(**cfg)).eval()


def test_bad_config_is_one_line_error():
    with pytest.raises(PipelineError, match="divisible") as err:
        GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=4, n_embd=30)
    assert "\n" not in str(err.value)
    with pytest.raises(PipelineError, match="model.n_layer"):
        GPTConfig(vocab_size=10, block_size=8, n_layer=0, n_head=1, n_embd=8)
    with pytest.raises(PipelineError, match="dropout"):
        GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8, dropout=1.0)


def test_from_params_preset_then_overrides():
    cfg = GPTConfig.from_params(ModelConfig(preset="gpt2"), vocab_size=50257, block_size=1024)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == (12, 12, 768)
    cfg = GPTConfig.from_params(ModelConfig(preset="cpu-small", n_layer=3, tie_weights=False, doc_mask=True), 100, 64)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size, cfg.block_size) == (3, 4, 128, 100, 64)
    assert not cfg.tie_weights and cfg.doc_mask
    cfg = GPTConfig.from_params(ModelConfig(preset=None, n_layer=1, n_head=2, n_embd=16), 10, 8)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == (1, 2, 16)
    assert MODEL_PRESETS["gpt2-xl"] == dict(n_layer=48, n_head=25, n_embd=1600)
    assert MODEL_PRESETS["cpu-tiny"] == dict(n_layer=2, n_head=2, n_embd=64)


def test_gpt2_parameter_count():
    with torch.device("meta"):
        model = GPT(GPTConfig.from_params(ModelConfig(preset="gpt2"), 50257, 1024))
    assert model.num_params(non_embedding=False) == 124_439_808  # GPT-2 small, tied


def test_causality():
    model = tiny()
    idx = torch.randint(0, 37, (2, 16))
    logits, _ = model(idx)
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 37
    logits2, _ = model(changed)
    torch.testing.assert_close(logits[:, :10], logits2[:, :10], atol=1e-6, rtol=0)
    assert not torch.allclose(logits[:, 10:], logits2[:, 10:])


def test_document_mask_gives_each_document_its_own_logits():
    model = tiny()
    idx = torch.randint(0, 37, (2, 5))
    seg = torch.tensor([[1, 1, 1, 2, 2], [1, 1, 2, 2, 0]])
    packed, _ = model(idx, segment_ids=seg)
    for row, cuts in ((0, [(0, 3), (3, 5)]), (1, [(0, 2), (2, 4), (4, 5)])):
        for a, b in cuts:
            alone, _ = model(idx[row : row + 1, a:b])
            torch.testing.assert_close(packed[row, a:b], alone[0], atol=1e-5, rtol=1e-5)
    unmasked, _ = model(idx)
    assert not torch.allclose(unmasked[0, 3:], packed[0, 3:], atol=1e-3)  # the mask does something
    assert segment_positions(seg).tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 0]]


def test_loss_mask_ignores_pad_positions():
    model = tiny()
    idx = torch.randint(0, 37, (2, 8))
    targets = torch.randint(0, 37, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, 5:] = False
    mask[1, 7] = False
    logits, loss = model(idx, targets, loss_mask=mask)
    per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, 37), targets.reshape(-1), reduction="none")
    torch.testing.assert_close(loss, per_token[mask.reshape(-1)].mean())
    other = targets.clone()
    other[~mask] = (other[~mask] + 3) % 37
    _, loss2 = model(idx, other, loss_mask=mask)
    assert loss2.item() == loss.item()
    _, full = model(idx, targets)
    torch.testing.assert_close(full, per_token.mean())
    assert full.item() != loss.item()


def test_context_longer_than_block_size():
    model = tiny()
    with pytest.raises(PipelineError, match="block_size 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_tiny_model_overfits_a_tiny_batch():
    model = tiny().train()
    torch.manual_seed(1)
    idx = torch.randint(0, 37, (4, 17))
    opt = adamw(model, weight_decay=0.0, lr=1e-2, betas=(0.9, 0.99), device=torch.device("cpu"))
    losses = []
    for _ in range(200):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] < 0.1:
            break
    assert losses[0] > 3.0 and losses[-1] < 0.1


def test_weight_tying_and_residual_init():
    tied, untied = tiny(), tiny(tie_weights=False)
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert untied.num_params(non_embedding=False) == tied.num_params(non_embedding=False) + 37 * 32
    model = tiny(n_layer=8, n_embd=256, n_head=4)
    proj = torch.cat([b.attn.c_proj.weight.flatten() for b in model.transformer.h])
    fc = torch.cat([b.mlp.c_fc.weight.flatten() for b in model.transformer.h])
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert fc.std().item() == pytest.approx(0.02, rel=0.05)


def test_flops_per_token():
    model = tiny()
    n = model.num_params(non_embedding=False) - 16 * 32  # without positions
    assert model.num_params() == n
    assert model.flops_per_token() == 6 * n + 12 * 2 * 32 * 16
    assert model.flops_per_token(8) == 6 * n + 12 * 2 * 32 * 8


# ---- the modern recipe's layer switches ---------------------------------------------------------

MODERN = dict(positions="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, zero_init=True, logit_softcap=5.0, unet=True)
ONE_BY_ONE = [dict(positions="rope"), dict(norm="rmsnorm"), dict(mlp="relu2"), dict(qk_norm=True), dict(zero_init=True),
              dict(logit_softcap=5.0), dict(unet=True), MODERN]


@pytest.mark.parametrize("layers", ONE_BY_ONE, ids=lambda d: "+".join(d))
def test_each_switch_is_causal_decodes_with_the_cache_and_round_trips(tmp_path, layers):
    model = tiny(n_layer=3, **layers)
    if layers.get("zero_init"):
        with torch.no_grad():  # start from zero, then move off it so that the blocks do something
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    idx = torch.randint(0, 37, (2, 16))
    logits, _ = model(idx)
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 37
    torch.testing.assert_close(model(changed)[0][:, :10], logits[:, :10], atol=1e-5, rtol=0)
    prompt = idx[:, :4]
    with_cache = model.generate(prompt, 20, temperature=0, use_cache=True)
    assert torch.equal(with_cache, model.generate(prompt, 20, temperature=0, use_cache=False))
    save_model(model, tmp_path / "ckpt")
    loaded = load_any(tmp_path / "ckpt").eval()
    assert loaded.config == model.config and torch.equal(loaded(idx)[0], logits)


def test_switches_change_the_layers_they_name():
    classic, modern = tiny(), tiny(**MODERN)
    assert "transformer.wpe.weight" in dict(classic.named_parameters())
    assert "transformer.wpe.weight" not in dict(modern.named_parameters()), "rotary positions need no table"
    assert modern.num_params(non_embedding=False) == classic.num_params(non_embedding=False) - 16 * 32 - 5 * 32 \
        + 2 * 2 * 16 + 1, "no positions, no biases in the 5 norms; q and k gains per layer; one U-net skip weight"
    assert all(not b.attn.c_proj.weight.detach().any() and not b.mlp.c_proj.weight.detach().any()
               for b in modern.transformer.h), "zero-initialised output projections"
    logits, _ = tiny(logit_softcap=2.0)(torch.randint(0, 37, (2, 16)))
    assert logits.abs().max() < 2.0
    with pytest.raises(PipelineError, match="model.mlp must be one of gelu, relu2"):
        GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8, mlp="swish")
    with pytest.raises(PipelineError, match="even head width"):
        GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=3, n_embd=9, positions="rope")


def test_rotary_positions_restart_at_each_document():
    """With segment ids, a document's logits do not depend on where in the block it sits."""
    model = tiny(positions="rope", doc_mask=True)
    doc = torch.randint(0, 37, (1, 6))
    other = torch.randint(0, 37, (1, 10))
    packed = torch.cat([other, doc], dim=1)
    segments = torch.tensor([[1] * 10 + [2] * 6])
    logits, _ = model(packed, segment_ids=segments)
    alone, _ = model(doc)
    torch.testing.assert_close(logits[:, 10:], alone, atol=1e-5, rtol=0)


def test_hidden_matrices_are_the_linear_layers_inside_the_blocks():
    model = tiny(tie_weights=False, **MODERN)
    matrices = model.hidden_matrices()
    names = {id(p): n for n, p in model.named_parameters()}
    got = sorted((names[id(p)], parts) for p, parts in matrices)
    assert got == sorted([(f"transformer.h.{i}.{n}", 3 if n == "attn.c_attn.weight" else 1) for i in range(2)
                          for n in ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")])
