"""LoRA: which parameters train, merge equals the unmerged model, adapter folders, and LoRA fine-tuning."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn as nn

from model.finetune import finetune
from model.folders import ADAPTER_CONFIG_FILE, ADAPTER_FILE, load_any, refuse_untracked_base, write_adapter
from model.gpt import GPT, GPTConfig
from model.llama import Llama, LlamaConfig
from model.lora import LoRALinear, adapter_state, apply_lora, trainable_params
from model.records import load_records
from model.templates import DEFAULT_TEMPLATE
from model.config import FinetuneConfig, LoraConfig
from pipeline.errors import PipelineError
from pipeline.tokenizer import load_tokenizer
from tests.helpers import REPO, save_model, write_char_vocab

ALL = LoraConfig().targets  # every Linear layer of either layout
SIZES = dict(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)
MODERN = dict(positions="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, logit_softcap=15.0, unet=True)  # the GPT-2 layout's switches


def tiny(arch: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    if arch in ("gpt2", "modern"):
        return GPT(GPTConfig(**{**SIZES, **(MODERN if arch == "modern" else {}), **overrides})).eval()
    return Llama(LlamaConfig(**{**SIZES, "n_kv_head": 1, "intermediate_size": 64, **overrides})).eval()


def randomize_adapters(model: nn.Module) -> None:
    """B starts at zero (the adapters change nothing); give it values so merging has work to do."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.normal_(0.0, 0.05)


def logits(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx)[0]


@pytest.mark.parametrize("arch, layers", [("gpt2", 4), ("llama", 7)])
def test_only_the_adapters_train(arch, layers):
    model = tiny(arch)
    before = set(model.state_dict())
    names = apply_lora(model, rank=4, alpha=8, dropout=0.0, targets=ALL)
    assert len(names) == layers * 2  # per block; lm_head (tied, or not named) is left alone
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {f"{n}.lora_{x}" for n in names for x in "AB"}
    assert set(model.state_dict()) - before == trained  # base tensors keep their names
    expected = sum(4 * (m.in_features + m.out_features) for m in model.modules() if isinstance(m, LoRALinear))
    assert trainable_params(model) == expected < model.num_params() / 5
    idx = torch.randint(0, 40, (2, 10))
    torch.testing.assert_close(logits(model, idx), logits(tiny(arch), idx), atol=0, rtol=0)  # B = 0: the base model


@pytest.mark.parametrize("arch", ["gpt2", "modern", "llama"])
def test_merged_equals_unmerged(tmp_path, arch):
    """Loading an adapter folder folds the adapters in: the same outputs as the wrapped layers."""
    model = tiny(arch)
    save_model(tiny(arch), tmp_path / "base")
    apply_lora(model, rank=4, alpha=16, dropout=0.0, targets=["c_attn", "mlp.c_proj", "q_proj", "down_proj"])
    randomize_adapters(model)
    idx = torch.randint(0, 40, (2, 12))
    unmerged = logits(model, idx)
    assert (unmerged - logits(tiny(arch), idx)).abs().max() > 1e-3  # the adapters do change the output
    (tmp_path / "adapter").mkdir()
    write_adapter(tmp_path / "adapter", *adapter_state(model), base=tmp_path / "base")
    merged = load_any(tmp_path / "adapter")
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert all(p.requires_grad for p in merged.parameters())  # an ordinary model again
    assert (logits(merged.eval(), idx) - unmerged).abs().max() < 1e-5


def test_dropout_acts_on_the_adapter_input_in_training_only():
    model = tiny("gpt2")
    apply_lora(model, rank=4, alpha=8, dropout=0.5, targets=["c_attn"])
    randomize_adapters(model)
    idx = torch.randint(0, 40, (1, 8))
    evaluated = logits(model, idx)
    torch.manual_seed(1)
    assert not torch.allclose(logits(model.train(), idx), evaluated)
    torch.testing.assert_close(logits(model.eval(), idx), evaluated)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_adapter_folder_round_trip(tmp_path, arch):
    base = tiny(arch, tie_weights=False)
    save_model(base, tmp_path / "models" / "base")
    model = tiny(arch, tie_weights=False)
    apply_lora(model, rank=2, alpha=4, dropout=0.1, targets=ALL)
    randomize_adapters(model)
    (tmp_path / "models" / "adapter").mkdir()
    write_adapter(tmp_path / "models" / "adapter", *adapter_state(model), base=tmp_path / "models" / "base")
    idx = torch.randint(0, 40, (2, 9))
    expected = logits(model, idx)

    folder = tmp_path / "models" / "adapter"
    config = json.loads((folder / ADAPTER_CONFIG_FILE).read_text())
    assert config["base"] == "../base" and config["rank"] == 2 and config["alpha"] == 4 and config["dropout"] == 0.1
    from safetensors.torch import load_file

    assert all(name.endswith((".lora_A", ".lora_B")) for name in load_file(str(folder / ADAPTER_FILE)))
    assert (folder / ADAPTER_FILE).stat().st_size < (tmp_path / "models" / "base" / "model.safetensors").stat().st_size / 4
    shutil.move(tmp_path / "models", tmp_path / "moved")  # the base is found relative to the adapters
    loaded = load_any(tmp_path / "moved" / "adapter")
    assert type(loaded) is type(base) and not any(isinstance(m, LoRALinear) for m in loaded.modules())
    assert (logits(loaded.eval(), idx) - expected).abs().max() < 1e-5


def test_lora_errors_are_one_line(tmp_path):
    model = tiny("gpt2")  # tied: lm_head is the token embedding
    with pytest.raises(PipelineError, match=r"^finetune.lora.targets: no Linear layer .* c_attn, c_fc, c_proj, lm_head\)$"):
        apply_lora(model, 4, 8, 0.0, ["q_proj"], where="finetune.lora.targets")
    with pytest.raises(PipelineError, match="'lm_head' shares its weight with the token embedding"):
        apply_lora(model, 4, 8, 0.0, ["lm_head"])
    folder = tmp_path / "adapter"
    folder.mkdir()
    apply_lora(model, 2, 4, 0.0, ["c_attn"])
    write_adapter(folder, *adapter_state(model), base=tmp_path / "gone")
    with pytest.raises(PipelineError, match=r"adapter_config.json: base model folder .*gone not found"):
        load_any(folder)
    (folder / ADAPTER_CONFIG_FILE).write_text(json.dumps({"base": "../gone", "rank": "8"}))
    with pytest.raises(PipelineError, match="adapter_config.json: 'rank' must be an integer, got \"8\""):
        load_any(folder)
    save_model(tiny("gpt2"), tmp_path / "base")
    write_adapter(folder, *adapter_state(model), base=tmp_path / "base")
    config = json.loads((folder / ADAPTER_CONFIG_FILE).read_text())
    (folder / ADAPTER_CONFIG_FILE).write_text(json.dumps({**config, "rank": 3}))  # the tensors are rank 2
    with pytest.raises(PipelineError, match=r"adapter.safetensors: the adapters of '.*c_attn' do not fit its weight \(96, 32\) at rank 3$"):
        load_any(folder)


def test_an_adapter_folder_whose_base_dvc_does_not_see_is_refused_until_merged(tmp_path):
    """As `finetune.init_from` (or `train.init_from`), only the adapter folder is the stage's DVC
    dependency: a base outside it could change without DVC noticing, so the stage refuses it in one
    line naming the fix, `tinygpt export` into one folder, which the stage then takes."""
    from model.export import main as export_main

    vocab = write_char_vocab(tmp_path / "vocab", "ab")
    save_model(tiny("gpt2", vocab_size=4, tie_weights=False), tmp_path / "models" / "base", vocab)
    model = tiny("gpt2", vocab_size=4, tie_weights=False)
    apply_lora(model, 2, 4, 0.0, ["c_attn"])
    randomize_adapters(model)
    adapter = tmp_path / "models" / "adapter"
    adapter.mkdir()
    write_adapter(adapter, *adapter_state(model), base=tmp_path / "models" / "base")
    shutil.copytree(vocab, adapter / "tokenizer")
    (tmp_path / "r.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    cfg = FinetuneConfig(data=str(tmp_path / "r.jsonl"), init_from=str(adapter), device="cpu", lora=LoraConfig())
    with pytest.raises(PipelineError, match=r"^finetune.init_from: \S+adapter holds LoRA adapters on \S+base, which DVC does not "
                                            r"track as an input of this stage; merge them first \(tinygpt export --checkpoint "):
        finetune(cfg, seed=1, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    merged = tmp_path / "models" / "merged"
    export_main(["--checkpoint", str(adapter), "--out", str(merged)])
    refuse_untracked_base("finetune.init_from", merged)  # one folder: nothing outside it
    idx = torch.randint(0, 4, (2, 7))
    assert (logits(load_any(merged).eval(), idx) - logits(model.eval(), idx)).abs().max() < 1e-5
    inside = tmp_path / "bundle"
    shutil.copytree(tmp_path / "models" / "base", inside / "base")
    write_adapter(inside, *adapter_state(model), base=inside / "base")
    refuse_untracked_base("train.init_from", inside)  # a base kept inside the adapter folder is tracked with it


# ---- fine-tuning with LoRA ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "modern", "llama"])
def test_lora_finetune_on_the_instruction_set(tmp_path, arch, capsys):
    from model.generate import main

    data = REPO / "data" / "instructions.jsonl"
    records = load_records(data)
    chars = DEFAULT_TEMPLATE.user_with_input + DEFAULT_TEMPLATE.assistant + "".join(
        r.instruction + (r.input or "") + r.output for r in records
    )
    vocab = write_char_vocab(tmp_path / "vocab", chars)
    size = load_tokenizer(vocab).vocab_size
    base = tiny(arch, vocab_size=size, block_size=256)
    with torch.no_grad():  # peakier than the 0.02 init, as a trained output layer: the frozen lm_head can then
        base.lm_head.weight.mul_(10)  # express the answers (at 0.02 the logits stay within about +-1)
    save_model(base, tmp_path / "base", vocab)
    base_bytes = (tmp_path / "base" / "model.safetensors").read_bytes()
    cfg = FinetuneConfig(data=str(data), init_from=str(tmp_path / "base"), epochs=2, batch_size=8, lr=1e-2, min_lr=1e-3,
                         weight_decay=0.0, device="cpu", lora=LoraConfig(rank=4, alpha=8))
    torch.set_num_threads(1)
    metrics = finetune(cfg, seed=1, out_dir=tmp_path / "out", print_fn=lambda *_: None)
    assert metrics["records"] == len(records) and metrics["truncated"] == 0
    assert metrics["loss_after"] < 0.8 * metrics["loss_before"]
    assert metrics["trained_params"] == 4096 < base.num_params(non_embedding=False) / 5  # rank x (in + out), summed over the layers
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [ADAPTER_FILE, ADAPTER_CONFIG_FILE, "template.json", "tokenizer"]
    assert (tmp_path / "base" / "model.safetensors").read_bytes() == base_bytes  # the base stays as it was
    merged = load_any(tmp_path / "out")
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    main(["--checkpoint", str(tmp_path / "out"), "--instruction", records[0].instruction, "--max-new-tokens", "5"])
    assert len(capsys.readouterr().out) <= 6  # the adapter folder serves the CLI too


def test_lora_refuses_to_overwrite_its_base(tmp_path):
    vocab = write_char_vocab(tmp_path / "vocab", "ab")
    save_model(tiny("gpt2", vocab_size=4), tmp_path / "base", vocab)
    (tmp_path / "r.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    cfg = FinetuneConfig(data=str(tmp_path / "r.jsonl"), init_from=str(tmp_path / "base"), device="cpu", lora=LoraConfig())
    with pytest.raises(PipelineError, match="also the output folder"):
        finetune(cfg, seed=1, out_dir=tmp_path / "base")
