"""Model folders (model/folders.py): ours, Hugging Face's and LoRA adapters written and read back,
`load_any` dispatching on what a folder holds, and one-line errors for folders that do not fit."""

import json

import pytest
import torch

from model.folders import (
    CONFIG_FILE, GENERATION_CONFIG_FILE, HF_CONFIG_FILE, WEIGHTS_FILE, load_any, read_ours, write_hf, write_ours,
)
from model.gpt import GPT, GPTConfig
from model.llama import Llama, LlamaConfig
from pipeline.errors import PipelineError
from pipeline.io import atomic_dir
from tests.helpers import save_model


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32)
    cfg.update(overrides)
    return GPT(GPTConfig(**cfg)).eval()


@pytest.mark.parametrize("tie", [True, False])
def test_save_load_roundtrip(tmp_path, tie):
    model = tiny(tie_weights=tie, bias=False, doc_mask=True)
    vocab = tmp_path / "vocab"
    vocab.mkdir()
    (vocab / "spec.json").write_text('{"kind": "char"}')
    save_model(model, tmp_path / "ckpt", vocab)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "vocab"]  # no temp folder left
    assert (tmp_path / "ckpt" / "tokenizer" / "spec.json").is_file()
    loaded = load_any(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    assert (loaded.lm_head.weight is loaded.transformer.wte.weight) == tie
    idx = torch.randint(0, 37, (2, 16))
    assert torch.equal(model(idx)[0], loaded(idx)[0])
    save_model(model, tmp_path / "ckpt")  # overwriting an existing checkpoint works
    assert not (tmp_path / "ckpt" / "tokenizer").exists()


def test_mismatched_checkpoint_is_one_line_error(tmp_path):
    save_model(tiny(), tmp_path / "ckpt")
    cfg_path = tmp_path / "ckpt" / "model_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["vocab_size"] = 50
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(PipelineError, match="transformer.wte.weight") as err:
        load_any(tmp_path / "ckpt")
    assert "\n" not in str(err.value)
    cfg["vocab_size"], cfg["n_layer"] = 37, 3
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(PipelineError, match="missing tensor"):
        load_any(tmp_path / "ckpt")
    cfg["n_layer"], cfg["colour"] = 2, "red"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(PipelineError, match="unknown key 'colour'"):
        load_any(tmp_path / "ckpt")
    with pytest.raises(PipelineError, match="neither"):
        load_any(tmp_path)


def test_load_any_reads_either_layout_and_old_checkpoints_without_arch(tmp_path):
    save_model(Llama(LlamaConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_kv_head=1, n_embd=8, intermediate_size=16)), tmp_path / "llama")
    assert isinstance(load_any(tmp_path / "llama"), Llama)
    config = json.loads((tmp_path / "llama/model_config.json").read_text())
    (tmp_path / "llama/model_config.json").write_text(json.dumps({**config, "arch": "mamba"}))
    with pytest.raises(PipelineError, match="unknown arch 'mamba'"):
        load_any(tmp_path / "llama")
    save_model(GPT(GPTConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=8)), tmp_path / "gpt")
    config = json.loads((tmp_path / "gpt/model_config.json").read_text())
    assert config.pop("arch") == "gpt2"
    (tmp_path / "gpt/model_config.json").write_text(json.dumps(config))  # as written before the Llama layout
    assert load_any(tmp_path / "gpt").config.n_embd == 8


def test_a_checkpoint_from_before_the_switches_loads_as_classic(tmp_path):
    save_model(tiny(), tmp_path / "gpt")
    config = json.loads((tmp_path / "gpt/model_config.json").read_text())
    for name in ("positions", "rope_theta", "norm", "mlp", "qk_norm", "zero_init", "logit_softcap", "unet"):
        config.pop(name)
    (tmp_path / "gpt/model_config.json").write_text(json.dumps(config))
    assert load_any(tmp_path / "gpt").config == tiny().config


@pytest.mark.parametrize("layout", ["ours", "hf"])
def test_a_truncated_weights_file_is_one_line_naming_it(tmp_path, layout):
    folder = tmp_path / layout
    with atomic_dir(folder) as tmp:
        (write_ours if layout == "ours" else write_hf)(tiny(), tmp)
    weights = folder / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(PipelineError, match=rf"^{weights}: not a readable safetensors file, truncated or corrupt") as err:
        load_any(folder)
    assert "\n" not in str(err.value)
    weights.write_bytes(b"\x00" * 5)
    with pytest.raises(PipelineError, match="truncated or corrupt"):
        load_any(folder)


def test_writers_fill_the_callers_folder_with_readable_files(tmp_path):
    """write_ours and write_hf write into the folder the caller opened (no folder of their own), with
    the usual file mode (safetensors alone would make the weights private)."""
    with atomic_dir(tmp_path / "both") as tmp:
        write_ours(tiny(), tmp)
        (tmp / "hf").mkdir()
        write_hf(tiny(), tmp / "hf", eos_id=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["both"]
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE, "hf"])
    hf = tmp_path / "both" / "hf"
    assert sorted(p.name for p in hf.iterdir()) == sorted([HF_CONFIG_FILE, WEIGHTS_FILE, GENERATION_CONFIG_FILE])
    assert json.loads((hf / GENERATION_CONFIG_FILE).read_text()) == {"bos_token_id": 3, "eos_token_id": 3}
    assert (hf / WEIGHTS_FILE).stat().st_mode & 0o044, "readable by group and others, as the umask allows"
    idx = torch.randint(0, 37, (1, 16))
    for folder in (tmp_path / "both", hf):
        assert torch.equal(load_any(folder)(idx)[0], tiny()(idx)[0])


def test_load_any_names_what_it_could_not_find(tmp_path):
    with pytest.raises(PipelineError, match=r"missing: not found \(a model folder\)"):
        load_any(tmp_path / "missing")
    save_model(tiny(), tmp_path / "ckpt")
    (tmp_path / "ckpt" / CONFIG_FILE).write_text("[1, 2]")
    with pytest.raises(PipelineError, match="model_config.json: must hold a JSON object, got list"):
        read_ours(tmp_path / "ckpt")
