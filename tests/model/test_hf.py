"""Hugging Face GPT-2 interop: logits match `transformers.GPT2LMHeadModel` within 1e-4 both ways."""

import json

import pytest
import torch
from safetensors.torch import save_file

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

from model.folders import load_any, read_hf  # noqa: E402
from model.gpt import GPT, GPTConfig  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from tests.helpers import save_hf  # noqa: E402

VOCAB, CTX = 61, 32


def hf_model(tie: bool):
    """A small random GPT2LMHeadModel with every parameter (biases, LayerNorms too) randomised."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=CTX, n_embd=48, n_layer=2, n_head=4,
        tie_word_embeddings=tie, bos_token_id=0, eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model


def hf_logits(model, idx):
    with torch.no_grad():
        return model(idx).logits


@pytest.mark.parametrize("tie", [True, False])
def test_from_hf_matches_transformers(tmp_path, tie):
    hf = hf_model(tie)
    hf.save_pretrained(tmp_path / "hf")
    ours = read_hf(tmp_path / "hf").eval()
    assert ours.config.tie_weights == tie and ours.config.block_size == CTX
    assert (ours.lm_head.weight is ours.transformer.wte.weight) == tie
    idx = torch.randint(0, VOCAB, (2, CTX))
    torch.testing.assert_close(ours(idx)[0], hf_logits(hf, idx), atol=1e-4, rtol=0)


@pytest.mark.parametrize("tie", [True, False])
def test_save_hf_loads_in_transformers(tmp_path, tie):
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=VOCAB, block_size=CTX, n_layer=2, n_head=4, n_embd=48, tie_weights=tie)).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0.0, 0.1)
    save_hf(ours, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    assert (hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()) == tie
    idx = torch.randint(0, VOCAB, (2, CTX))
    torch.testing.assert_close(hf_logits(hf, idx), ours(idx)[0], atol=1e-4, rtol=0)
    again = load_any(tmp_path / "out").eval()  # and back
    torch.testing.assert_close(again(idx)[0], ours(idx)[0], atol=0, rtol=0)


def test_pytorch_model_bin_folder_loads(tmp_path):
    hf = hf_model(tie=False)
    (tmp_path / "bin").mkdir()
    hf.config.to_json_file(tmp_path / "bin" / "config.json")
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    ours = load_any(tmp_path / "bin").eval()
    idx = torch.randint(0, VOCAB, (1, CTX))
    torch.testing.assert_close(ours(idx)[0], hf_logits(hf, idx), atol=1e-4, rtol=0)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path, capsys):
    hf_model(tie=True).config.to_json_file(tmp_path / "config.json")
    torch.save({"transformer.wte.weight": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(PipelineError, match="plain tensors"):
        read_hf(tmp_path)
    assert "never run" not in capsys.readouterr().out


def test_openai_style_keys_without_prefix_and_mask_buffers(tmp_path):
    hf = hf_model(tie=True)
    state = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.ones(1, 1, CTX, CTX).tril()
    hf.config.to_json_file(tmp_path / "config.json")
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    ours = read_hf(tmp_path).eval()
    idx = torch.randint(0, VOCAB, (1, 8))
    torch.testing.assert_close(ours(idx)[0], hf_logits(hf, idx), atol=1e-4, rtol=0)


def test_mismatched_hf_checkpoint_and_no_bias(tmp_path):
    hf_model(tie=True).save_pretrained(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["n_embd"] = 64
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PipelineError, match="has shape") as err:
        read_hf(tmp_path / "hf")
    assert "\n" not in str(err.value)
    cfg["n_embd"], cfg["activation_function"] = 48, "relu"
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PipelineError, match="activation_function"):
        read_hf(tmp_path / "hf")
    nobias = GPT(GPTConfig(vocab_size=VOCAB, block_size=CTX, n_layer=1, n_head=1, n_embd=8, bias=False))
    with pytest.raises(PipelineError, match="bias"):
        save_hf(nobias, tmp_path / "nb")
    assert not (tmp_path / "nb").exists()
