"""The Llama layout: logits match transformers' Llama/Qwen2/Mistral within 1e-4 both ways, one-line
refusals, KV-cache generation, document masking, checkpoints and a training step."""

import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

from model.folders import llama_config, load_any, read_hf  # noqa: E402
from model.gpt import GPT, GPTConfig  # noqa: E402
from model.layers import llama3_scale  # noqa: E402
from model.llama import Llama, LlamaConfig  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from tests.helpers import save_hf, save_model  # noqa: E402

VOCAB, CTX = 61, 32
SHAPE = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=CTX, bos_token_id=1, eos_token_id=2)
LLAMA3 = dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8)
CASES = {
    "gqa-untied": ("Llama", {}),
    "head_dim": ("Llama", dict(head_dim=16, num_key_value_heads=1)),
    "rope_theta": ("Llama", dict(rope_parameters=dict(rope_type="default", rope_theta=500.0))),
    "llama3": ("Llama", dict(rope_parameters=dict(rope_theta=500.0, **LLAMA3))),
    "tied": ("Llama", dict(tie_word_embeddings=True)),
    "qwen2": ("Qwen2", dict(tie_word_embeddings=True)),
    "mistral": ("Mistral", dict(sliding_window=None, head_dim=8)),
}


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter random, norms around 1 and weights large enough for sharp attention (so rotary
    positions matter)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.2)
    return model.eval()


def hf_model(family: str, **overrides):
    torch.manual_seed(0)
    cfg = getattr(transformers, f"{family}Config")(**{**SHAPE, **overrides})
    return randomise(getattr(transformers, f"{family}ForCausalLM")(cfg))


def hf_logits(model, idx):
    with torch.no_grad():
        return model(idx).logits


def tiny(**overrides) -> Llama:
    torch.manual_seed(0)
    cfg = dict(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, intermediate_size=48)
    return randomise(Llama(LlamaConfig(**{**cfg, **overrides})))


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers_both_ways(tmp_path, case):
    family, overrides = CASES[case]
    hf = hf_model(family, **overrides)
    hf.save_pretrained(tmp_path / "hf")
    ours = read_hf(tmp_path / "hf").eval()
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == overrides.get("tie_word_embeddings", False)
    assert ours.config.qkv_bias == (family == "Qwen2") and ours.config.eos_id == 2
    idx = torch.randint(0, VOCAB, (2, CTX))
    torch.testing.assert_close(ours(idx)[0], hf_logits(hf, idx), atol=1e-4, rtol=0)

    save_hf(ours, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(back).__name__ == ("Qwen2ForCausalLM" if family == "Qwen2" else "LlamaForCausalLM")
    torch.testing.assert_close(hf_logits(back, idx), ours(idx)[0], atol=1e-4, rtol=0)
    assert transformers.GenerationConfig.from_pretrained(tmp_path / "out").eos_token_id == 2


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_model_of_ours_saves_for_transformers(tmp_path, qkv_bias):
    ours = randomise(Llama(LlamaConfig(
        vocab_size=VOCAB, block_size=CTX, n_layer=2, n_head=6, n_kv_head=2, n_embd=48, head_dim=10,
        intermediate_size=64, rope_theta=1000.0, rope_scaling={k: v for k, v in LLAMA3.items() if k != "rope_type"},
        rms_norm_eps=1e-5, qkv_bias=qkv_bias, eos_id=0,
    )))
    save_hf(ours, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert hf.config.rope_parameters["rope_type"] == "llama3" and hf.config.num_key_value_heads == 2
    idx = torch.randint(0, VOCAB, (2, CTX))
    torch.testing.assert_close(hf_logits(hf, idx), ours(idx)[0], atol=1e-4, rtol=0)
    again = read_hf(tmp_path / "out")
    assert again.config == ours.config
    torch.testing.assert_close(again(idx)[0], ours(idx)[0], atol=0, rtol=0)


def test_sharded_safetensors_and_inv_freq_buffers(tmp_path):
    hf = hf_model("Llama")
    hf.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2 and not (tmp_path / "hf" / "model.safetensors").exists()
    ours = load_any(tmp_path / "hf").eval()
    assert isinstance(ours, Llama)
    idx = torch.randint(0, VOCAB, (1, CTX))
    torch.testing.assert_close(ours(idx)[0], hf_logits(hf, idx), atol=1e-4, rtol=0)


def test_sliding_window_shortens_the_context(tmp_path):
    hf = hf_model("Mistral", sliding_window=16)
    hf.save_pretrained(tmp_path / "hf")
    ours = read_hf(tmp_path / "hf").eval()
    assert ours.config.block_size == 16  # up to the window, sliding-window attention is causal attention
    idx = torch.randint(0, VOCAB, (2, 16))
    torch.testing.assert_close(ours(idx)[0], hf_logits(hf, idx), atol=1e-4, rtol=0)


def hf_dict(**changes) -> dict:
    d = transformers.LlamaConfig(**SHAPE).to_dict() | {"architectures": ["LlamaForCausalLM"]}
    return d | changes


def test_both_rope_spellings_read_the_same():
    new = llama_config(hf_dict(rope_parameters=dict(rope_theta=5e5, **LLAMA3)), "new", None)
    old = hf_dict(rope_theta=5e5, rope_scaling={**LLAMA3})
    del old["rope_parameters"]
    assert llama_config(old, "old", None) == new
    assert new.rope_theta == 5e5 and new.rope_scaling == {k: v for k, v in LLAMA3.items() if k != "rope_type"}


@pytest.mark.parametrize("changes, key", [
    (dict(num_local_experts=8), "num_local_experts"),
    (dict(rope_parameters=dict(rope_type="yarn", rope_theta=1e4, factor=2.0)), "rope_type 'yarn'"),
    (dict(rope_parameters=None, rope_scaling=dict(type="linear", factor=2.0)), "rope_type 'linear'"),
    (dict(rope_parameters=dict(rope_type="llama3", rope_theta=1e4, factor=2.0)), "low_freq_factor"),
    (dict(architectures=["GPTNeoXForCausalLM"], model_type="gpt_neox"), "GPTNeoXForCausalLM"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(num_key_value_heads=3), "n_kv_head"),
])
def test_unsupported_hf_configs_are_one_line_errors(changes, key):
    with pytest.raises(PipelineError, match=key) as err:
        llama_config(hf_dict(**changes), "cfg.json", None)
    assert "\n" not in str(err.value) and str(err.value).startswith("cfg.json: ")


def test_unsupported_folder_and_bad_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(hf_dict(num_local_experts=4)))
    with pytest.raises(PipelineError, match="num_local_experts"):
        load_any(tmp_path)
    with pytest.raises(PipelineError, match="n_kv_head") as err:
        LlamaConfig(vocab_size=8, block_size=8, n_layer=1, n_head=4, n_kv_head=3, n_embd=16, intermediate_size=8)
    assert "\n" not in str(err.value)
    with pytest.raises(PipelineError, match="head_dim"):
        LlamaConfig(vocab_size=8, block_size=8, n_layer=1, n_head=3, n_kv_head=1, n_embd=16, intermediate_size=8)


def test_llama3_scaling_is_piecewise_in_wavelength():
    """Short wavelengths kept, long ones stretched by `factor`, a linear blend in between."""
    factor, low, high, original = 8.0, 1.0, 4.0, 16

    def reference(freq: float) -> float:
        wavelength = 2 * math.pi / freq
        if wavelength < original / high:
            return freq
        if wavelength > original / low:
            return freq / factor
        smooth = (original / wavelength - low) / (high - low)
        return (1 - smooth) * freq / factor + smooth * freq

    inv_freq = 2 * math.pi / torch.tensor([2.0, 4.0, 6.0, 8.0, 12.0, 16.0, 20.0, 64.0])
    scaled = llama3_scale(inv_freq, factor, low, high, original)
    torch.testing.assert_close(scaled, torch.tensor([reference(f) for f in inv_freq.tolist()]))


def test_kv_cache_generation_matches_no_cache_and_holds_kv_heads():
    model = tiny()
    prompt = torch.randint(0, VOCAB, (2, 5))
    cached = model.generate(prompt, 24, temperature=0)  # runs past block_size 16: the window slides
    plain = model.generate(prompt, 24, temperature=0, use_cache=False)
    assert torch.equal(cached, plain) and cached.shape == (2, 29)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    sampled = model.generate(prompt, 8, temperature=1.0, top_k=10, generator=g1)
    assert torch.equal(sampled, model.generate(prompt, 8, temperature=1.0, top_k=10, generator=g2, use_cache=False))
    caches = model._new_caches()
    with torch.no_grad():
        model._hidden(prompt, torch.arange(5), caches=caches)
    assert caches[0].k.shape[:3] == (2, 2, 5) and caches[0].pos == 5  # n_kv_head 2 of 4 heads, grown to the prompt


def test_packed_documents_equal_each_document_alone():
    model = tiny()
    a, b = torch.randint(0, VOCAB, (1, 7)), torch.randint(0, VOCAB, (1, 9))
    ta, tb = torch.randint(0, VOCAB, (1, 7)), torch.randint(0, VOCAB, (1, 9))
    seg = torch.tensor([[1] * 7 + [2] * 9])
    packed, loss = model(torch.cat([a, b], 1), torch.cat([ta, tb], 1), segment_ids=seg)
    (alone_a, loss_a), (alone_b, loss_b) = model(a, ta), model(b, tb)
    torch.testing.assert_close(packed[:, :7], alone_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, 7:], alone_b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, (7 * loss_a + 9 * loss_b) / 16, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model(torch.cat([a, b], 1))[0][:, 7:], alone_b, atol=1e-3)  # the mask does something


def test_checkpoint_round_trip_and_load_any(tmp_path):
    model = tiny(tie_weights=True, dropout=0.1)
    save_model(model, tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "model_config.json").read_text())["arch"] == "llama"
    loaded = load_any(tmp_path / "ckpt", dropout=0.0).eval()
    assert isinstance(loaded, Llama) and loaded.config.dropout == 0.0
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    idx = torch.randint(0, VOCAB, (2, 16))
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0], atol=0, rtol=0)
    save_model(GPT(GPTConfig(vocab_size=VOCAB, block_size=8, n_layer=1, n_head=2, n_embd=16)), tmp_path / "gpt")
    assert isinstance(load_any(tmp_path / "gpt"), GPT)


def test_parameter_count_matches_transformers():
    for tie in (False, True):
        hf = hf_model("Llama", tie_word_embeddings=tie)
        ours = Llama(llama_config(hf.config.to_dict(), "cfg", None))
        assert ours.num_params(non_embedding=False) == hf.num_parameters()
        assert ours.num_params() == hf.num_parameters() - (0 if tie else VOCAB * 48)
    assert ours.flops_per_token(8) == 6 * ours.num_params() + 12 * 2 * 48 * 8


def test_training_step_reduces_loss():
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                              intermediate_size=48, qkv_bias=True)).train()
    idx = torch.randint(0, VOCAB, (4, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in model.parameters())
    assert losses[-1] < 0.5 * losses[0]
