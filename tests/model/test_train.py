"""The trainer: learning, exact resume after SIGKILL, DDP on CPU, refusals, NaN stop, schedule, data order."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import STATE_FORMAT, latest_checkpoint, load_checkpoint, save_checkpoint
from model.gpt import GPT, GPTConfig
from model.metrics import Tracker
from model.stream import BlockOrder, Position
from model.train import lr_at, train
from model.config import ModelConfig, TrainConfig
from pipeline.blocks import write_blocks
from pipeline.errors import PipelineError
from pipeline.tokenizer import CharTokenizer
from tests.helpers import save_model, write_char_vocab

REPO = Path(__file__).resolve().parents[2]
CHARS = "abcdefghijklmnopqrstuvwxyz .,:()=+12\n"
V = len(CHARS) + 2  # char vocab: EOS, UNK, then the characters
TEXTS = {
    "prose": "the cat sat on the mat. a dog ran in the park, then it sat down.\n",
    "code": "def add(a, b):\n    return a + b\nx = add(1, 2)\n",
}
T = 16  # context length of the test data
TINY = dict(preset=None, n_layer=2, n_head=2, n_embd=32)


def make_blocks(path: Path, text: str, n_docs: int, context: int = T, tokenizer: str = "char", extra_vocab: int = 0, tok=None):
    """Concatenated documents (EOS after each) cut into blocks of context + 1 tokens, stride context,
    with the char tokenizer of CHARS or `tok` (whose name then goes into the manifest)."""
    tokenizer = tok.name if tok is not None else tokenizer
    tok = tok or CharTokenizer(CHARS)
    ids, seg, doc = [], [], 1
    for i in range(n_docs):
        doc_ids = list(tok.encode(text[i % 7 :] + text[: i % 7])) + [tok.eos_id]
        ids += doc_ids
        seg += [doc] * len(doc_ids)
        doc += 1
    n = max(0, (len(ids) - 1) // context)
    tokens = np.array([ids[i * context : i * context + context + 1] for i in range(n)], dtype=np.uint16).reshape(n, context + 1)
    segments = np.zeros_like(tokens)
    for r in range(n):
        s = np.array(seg[r * context : r * context + context + 1])
        segments[r] = s - s[0] + 1
    manifest = {
        "tokenizer": tokenizer, "vocab_size": tok.vocab_size + extra_vocab, "eos_id": tok.eos_id, "pad_id": tok.pad_id,
        "context_length": context, "mode": "concat", "n_blocks": n, "n_tokens": int(tokens.size),
        "pad_fraction": 0.0, "sources": {}, "inputs": {},
    }
    write_blocks(path, tokens, segments, manifest)


def make_data(root: Path, n_train_docs: int = 40) -> dict:
    """A char vocab folder, train blocks mixing both sources, and a val folder per source."""
    vocab = write_char_vocab(root / "vocab", CHARS)
    make_blocks(root / "packed/train", TEXTS["prose"] + TEXTS["code"], n_train_docs)
    for name, text in TEXTS.items():
        make_blocks(root / "packed/val" / name, text, 6)
    return dict(
        train_dir=root / "packed/train", val_dir=root / "packed/val", vocab_dir=vocab,
        out_dir=root / "model", checkpoint_dir=root / "checkpoints",
    )


def cfg(**overrides) -> TrainConfig:
    base = dict(device="cpu", batch_size=8, max_iters=60, lr=3e-3, min_lr=3e-4, warmup_iters=5, eval_interval=30,
                eval_blocks=4, checkpoint_interval=0, threads=1, log_interval=5, peak_flops=1e9)
    base.update(overrides)
    return TrainConfig(**base)


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_loss_decreases_and_outputs_written(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    paths = make_data(tmp_path / "d")
    tracker = Tracker(tmp_path / "metrics", timing_file=tmp_path / "timing.json", wandb_mode="offline",
                      wandb_dir=tmp_path / "wandb", config={"a": 1}, tags=["code=0.5"])
    result = train(0, ModelConfig(**TINY), cfg(lr=1e-2, min_lr=1e-3, max_iters=100, eval_interval=50), tracker=tracker, **paths)
    s = result.summary
    first_loss = tracker.train_rows[0][1]
    assert first_loss > 3.0  # about ln(V) at init
    assert s["train_loss"] < 1.0 and s["val_loss"] < 1.5, s  # val: blocks spread over unseen documents
    assert set(s) >= {"val_loss_prose", "val_loss_code", "step", "params", "tokens_seen"}
    assert s["step"] == 100
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert timing["tokens_per_s"] > 0 and timing["mfu"] > 0 and timing["timed_steps"] == 99
    out = paths["out_dir"]
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "model_config.json", "tokenizer", "train_manifest.json"}
    assert (out / "tokenizer" / "chars.json").is_file()
    summary = json.loads((tmp_path / "metrics/metrics.json").read_text())
    assert summary["step"] == 100 and summary["val_loss_code"] == s["val_loss_code"] and "tokens_per_s" not in summary
    plots = tmp_path / "metrics/plots/metrics"
    train_tsv = (plots / "train/loss.tsv").read_text().splitlines()
    assert train_tsv[0] == "step\tloss" and len(train_tsv) == 1 + 20
    assert len((plots / "val/loss.tsv").read_text().splitlines()) == 1 + 2
    assert sorted(p.name for p in (plots / "val").iterdir()) == ["loss.tsv", "loss_code.tsv", "loss_prose.tsv"]
    assert list((tmp_path / "wandb").rglob("*.wandb"))  # an offline W&B run was recorded
    assert latest_checkpoint(paths["checkpoint_dir"]).name == "step-00000100"


RUNNER = """
import json, sys
from pathlib import Path
from model.config import ModelConfig, TrainConfig
from model.train import train
spec = json.loads(Path(sys.argv[1]).read_text())
res = train(0, ModelConfig(**spec["model"]), TrainConfig(**spec["train"]), **spec["paths"])
import torch, os
rank = int(os.environ.get("RANK", "0"))
if res.model is not None:  # under FSDP only rank 0 holds the gathered model
    torch.save({k: v.detach().clone() for k, v in res.model.state_dict().items()}, spec["weights"] + f".rank{rank}")
"""


def write_spec(tmp_path: Path, name: str, paths: dict, model: dict, train_cfg: TrainConfig) -> Path:
    spec = {
        "model": model, "train": asdict(train_cfg), "weights": str(tmp_path / f"{name}.pt"),
        "paths": {k: str(v) for k, v in paths.items()},
    }
    (tmp_path / "runner.py").write_text(RUNNER)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def env() -> dict:
    e = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", WANDB_MODE="disabled", WANDB_SILENT="true")
    return e


MODERN = dict(TINY, recipe="modern", norm="rmsnorm", mlp="relu2", qk_norm=True, zero_init=True, logit_softcap=15.0, unet=True)  # every switch


@pytest.mark.parametrize("recipe", ["adamw", "muon"])
def test_resume_after_sigkill_is_bitwise_identical(tmp_path, recipe):
    """AdamW (with dropout: the RNG state must be restored too), and Muon + AdamW on the modern
    layers: both optimizers' state comes back."""
    if recipe == "adamw":
        model, train_cfg = dict(TINY, dropout=0.1), cfg(max_iters=60, checkpoint_interval=5, eval_interval=20, grad_accum=2, batch_size=4)
    else:
        model = MODERN
        train_cfg = cfg(max_iters=60, checkpoint_interval=5, eval_interval=20, grad_accum=2, batch_size=4, optimizer="muon",
                        muon_momentum_warmup=20, muon_weight_decay=0.1)
    ref = make_data(tmp_path / "ref")
    train(0, ModelConfig(**model), train_cfg, **ref)

    paths = make_data(tmp_path / "run")
    spec = write_spec(tmp_path, "run", paths, model, train_cfg)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "runner.py"), str(spec)], env=env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and latest_checkpoint(paths["checkpoint_dir"]) is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)  # kill -9 right after its first checkpoint
    proc.wait()
    ckpt = latest_checkpoint(paths["checkpoint_dir"])
    assert ckpt is not None and int(ckpt.name.split("-")[1]) < 60, "the run was not interrupted"
    assert not paths["out_dir"].exists()

    train(0, ModelConfig(**model), train_cfg, **paths)  # resumes from the last good checkpoint
    a, b = weights(ref["out_dir"]), weights(paths["out_dir"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_debris_from_a_kill_is_ignored(tmp_path):
    ckpts = tmp_path / "ckpt"
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=1, n_head=1, n_embd=8))
    state = {"format": STATE_FORMAT, "fingerprint": "x", "step": 5}
    save_checkpoint(ckpts, model, state, {"tokenizer": "char"})
    (ckpts / ".step-00000010.tmp-abc").mkdir()  # killed while writing the next one
    (ckpts / ".step-00000010.tmp-abc" / "model.safetensors").write_bytes(b"partial")
    (ckpts / "step-00000008").mkdir()  # killed while deleting an old one: no train_state.pt left
    assert latest_checkpoint(ckpts).name == "step-00000005"
    assert load_checkpoint(ckpts, expected="x")[1]["step"] == 5
    assert load_checkpoint(ckpts, print_fn=lambda *_: None, expected="other params") is None
    save_checkpoint(ckpts, model, dict(state, step=10), {})
    assert [p.name for p in ckpts.iterdir()] == ["step-00000010"]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_ddp_two_processes_gloo(tmp_path, optimizer):
    """Two ranks end with identical weights; with Muon each rank runs the same update on the
    all-reduced gradient."""
    paths = make_data(tmp_path / "d")
    train_cfg = cfg(max_iters=20, eval_interval=10, checkpoint_interval=10, batch_size=4, optimizer=optimizer)
    spec = write_spec(tmp_path, "ddp", paths, MODERN if optimizer == "muon" else TINY, train_cfg)
    proc = torchrun(tmp_path, spec, 2, stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    w0 = torch.load(tmp_path / "ddp.pt.rank0", weights_only=True)
    w1 = torch.load(tmp_path / "ddp.pt.rank1", weights_only=True)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    saved = weights(paths["out_dir"])
    assert torch.equal(saved["transformer.wte.weight"], w0["transformer.wte.weight"])
    state = torch.load(latest_checkpoint(paths["checkpoint_dir"]) / "train_state.pt", weights_only=True)
    assert len(state["rng"]) == 2 and state["step"] == 20
    n_blocks = json.loads((paths["train_dir"] / "manifest.json").read_text())["n_blocks"]
    assert state["position"]["epoch"] * n_blocks + state["position"]["index"] == 20 * 2 * 4  # steps x ranks x batch


def test_block_order_is_resumable_and_ranks_disjoint():
    order = BlockOrder(10, seed=3)
    a = Position()
    whole = order.take(a, 25)
    b = Position()
    parts = np.concatenate([order.take(b, 7), BlockOrder(10, 3).take(b, 18)])
    assert np.array_equal(whole, parts) and (a.epoch, a.index) == (b.epoch, b.index) == (2, 5)
    assert sorted(whole[:10]) == list(range(10)) and not np.array_equal(whole[:10], whole[10:20])
    step = order.take(Position(), 2 * 4)  # two ranks, batch 4
    assert not set(step[:4]) & set(step[4:])


def test_lr_schedule():
    c = TrainConfig(lr=1.0, min_lr=0.1, warmup_iters=10, max_iters=110)
    assert lr_at(0, c) == pytest.approx(1 / 11)
    assert lr_at(9, c) == pytest.approx(10 / 11)
    assert lr_at(10, c) == pytest.approx(1.0)
    assert lr_at(60, c) == pytest.approx(0.55)
    assert lr_at(110, c) == pytest.approx(0.1) and lr_at(500, c) == pytest.approx(0.1)


def test_refuses_mismatched_data(tmp_path):
    paths = make_data(tmp_path / "d")
    other_vocab = tmp_path / "other_vocab"
    save_model(GPT(GPTConfig(vocab_size=99, block_size=T, n_layer=1, n_head=1, n_embd=8)), other_vocab)
    with pytest.raises(PipelineError, match=f"vocab size {V} does not match") as err:
        train(0, ModelConfig(**TINY), cfg(init_from=str(other_vocab)), **paths)
    assert "\n" not in str(err.value)

    short = tmp_path / "short"
    save_model(GPT(GPTConfig(vocab_size=V, block_size=T // 2, n_layer=1, n_head=1, n_embd=8)), short)
    with pytest.raises(PipelineError, match=f"context length {T} exceeds"):
        train(0, ModelConfig(**TINY), cfg(init_from=str(short)), **paths)

    other_tokenizer = tmp_path / "other_tokenizer"
    save_model(GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=1, n_head=1, n_embd=8)), other_tokenizer)
    (other_tokenizer / "train_manifest.json").write_text(json.dumps({"tokenizer": "gpt2", "vocab_size": V}))
    with pytest.raises(PipelineError, match="data tokenized with 'char' but train.init_from .* uses 'gpt2'"):
        train(0, ModelConfig(**TINY), cfg(init_from=str(other_tokenizer)), **paths)

    make_blocks(tmp_path / "val_wide", TEXTS["code"], 6, extra_vocab=5)
    shutil.rmtree(paths["val_dir"] / "code")
    shutil.copytree(tmp_path / "val_wide", paths["val_dir"] / "code")
    with pytest.raises(PipelineError, match=f"code: vocab size {V + 5} does not match"):
        train(0, ModelConfig(**TINY), cfg(), **paths)
    assert not paths["out_dir"].exists()


def test_checkpoint_of_other_params_is_not_resumed(tmp_path):
    paths = make_data(tmp_path / "d")
    train(0, ModelConfig(**TINY), cfg(max_iters=6, eval_interval=0), **paths)
    assert latest_checkpoint(paths["checkpoint_dir"]).name == "step-00000006"
    changed = train(0, ModelConfig(**TINY), cfg(max_iters=6, eval_interval=0, lr=2e-3), **paths)
    fresh = train(0, ModelConfig(**TINY), cfg(max_iters=6, eval_interval=0, lr=2e-3),
                  **dict(paths, out_dir=tmp_path / "m2", checkpoint_dir=tmp_path / "c2"))
    for k, v in fresh.model.state_dict().items():
        assert torch.equal(v, changed.model.state_dict()[k]), k


def test_a_checkpoint_of_the_other_format_is_refused_not_replaced(tmp_path):
    """A sharded checkpoint met by an unsharded run (or the reverse) stops the run in one line:
    starting fresh would delete it on the first new checkpoint."""
    paths = make_data(tmp_path / "d")
    train(0, ModelConfig(**TINY), cfg(max_iters=6, eval_interval=0), **paths)
    latest = latest_checkpoint(paths["checkpoint_dir"])
    (latest / "shards").mkdir()  # as a sharded run leaves it
    with pytest.raises(PipelineError, match=r"step-00000006: a checkpoint saved with train.parallel: fsdp under torchrun; "
                                            r"run that way to resume it, or delete .* to start fresh$"):
        train(0, ModelConfig(**TINY), cfg(max_iters=8, eval_interval=0), **paths)
    assert (latest / "shards").is_dir()


def test_init_from_checkpoint_continues(tmp_path):
    paths = make_data(tmp_path / "d")
    train(0, ModelConfig(**TINY), cfg(max_iters=10, eval_interval=0), **paths)
    base = tmp_path / "base"
    shutil.copytree(paths["out_dir"], base)
    paths2 = dict(paths, out_dir=tmp_path / "ft", checkpoint_dir=tmp_path / "ft_ckpt")
    res = train(0, ModelConfig(preset="cpu-tiny"), cfg(max_iters=2, init_from=str(base)), **paths2)
    assert res.model.config.n_embd == 32  # the shape comes from the checkpoint, not the params


def test_nan_loss_stops_with_one_line_error(tmp_path):
    paths = make_data(tmp_path / "d")
    with pytest.raises(PipelineError, match=r"(loss|gradient norm) is (nan|inf)") as err:
        train(0, ModelConfig(**TINY), cfg(lr=1e30, warmup_iters=0, grad_clip=0.0), **paths)
    assert "\n" not in str(err.value)
    assert not paths["out_dir"].exists()


def test_run_config_and_tags():
    from model.metrics import mixture_tags, run_config
    from pipeline.config import load_params

    params = load_params(REPO / "params.yaml")
    config = run_config(params, {"train": "abc"})
    assert config["seed"] == params.seed and config["train"]["lr"] == params.train.lr and config["model"]
    assert config["data_manifests"] == {"train": "abc"} and "git_commit" in config
    assert mixture_tags({"prose": 0.5, "code": 1}) == ["code=1", "prose=0.5"]


TINY_LLAMA = dict(arch="llama", preset=None, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, intermediate_size=64, rope_theta=10000.0)


def test_llama_layout_trains_resumes_and_continues(tmp_path, capsys, monkeypatch):
    """`model.arch: llama` goes through the same trainer: it learns, resumes bit for bit, and a
    trained Llama folder is an `init_from` for continued pretraining."""
    from model.folders import load_any
    from model.llama import Llama

    paths = make_data(tmp_path / "d")
    train_cfg = cfg(lr=1e-2, min_lr=1e-3, max_iters=60, checkpoint_interval=30, eval_interval=30)
    result = train(0, ModelConfig(**TINY_LLAMA), train_cfg, **paths)
    assert isinstance(result.model, Llama) and result.model.config.n_kv_head == 2
    assert result.summary["train_loss"] < 1.5 and result.summary["val_loss"] < 2.0, result.summary
    assert isinstance(load_any(paths["out_dir"]), Llama)

    import model.train as train_module

    class Crash(Exception):
        pass

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Crash

    real_save = train_module.save_checkpoint
    resumed = make_data(tmp_path / "resumed")
    monkeypatch.setattr(train_module, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        train(0, ModelConfig(**TINY_LLAMA), train_cfg, **resumed)  # dies right after the step-30 checkpoint
    monkeypatch.undo()
    capsys.readouterr()
    train(0, ModelConfig(**TINY_LLAMA), train_cfg, **resumed)
    assert "train: resuming from" in capsys.readouterr().out
    a, b = weights(paths["out_dir"]), weights(resumed["out_dir"])
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed at step 30 of 60: same weights"

    more = dict(paths, out_dir=tmp_path / "more", checkpoint_dir=tmp_path / "more_ckpt")
    again = train(0, ModelConfig(), cfg(max_iters=2, init_from=str(paths["out_dir"])), **more)
    assert isinstance(again.model, Llama), "the architecture comes from the checkpoint, not the params"


def test_continue_pretraining_a_hugging_face_llama_with_its_own_tokenizer(tmp_path):
    """`tokenizer.name: hf` + `train.init_from` a local LlamaForCausalLM folder: the data fits the
    model (same tokenizer.json, embedding padded past the tokenizer), training lowers the loss; data
    of another tokenizer is refused."""
    transformers = pytest.importorskip("transformers")
    from model.llama import Llama
    from pipeline.config import TokenizerConfig
    from pipeline.tokenizer import load_tokenizer
    from pipeline.vocab import build_vocab
    from tests.helpers import write_hf_model_tokenizer

    folder = write_hf_model_tokenizer(tmp_path / "models/tiny", sentencepiece=True)
    build_vocab(TokenizerConfig(name="hf", path=str(folder)), [], tmp_path / "vocab")
    tok = load_tokenizer(tmp_path / "vocab")
    config = transformers.LlamaConfig(vocab_size=tok.vocab_size + 13, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    paths = dict(train_dir=tmp_path / "train", val_dir=tmp_path / "val", vocab_dir=tmp_path / "vocab",
                 out_dir=tmp_path / "model", checkpoint_dir=tmp_path / "ckpt")
    make_blocks(paths["train_dir"], TEXTS["prose"] + TEXTS["code"], 30, tok=tok)
    make_blocks(paths["val_dir"] / "prose", TEXTS["prose"], 6, tok=tok)
    result = train(0, ModelConfig(), cfg(lr=1e-2, min_lr=1e-3, max_iters=60, eval_interval=0, init_from=str(folder)), **paths)
    assert isinstance(result.model, Llama) and result.model.config.vocab_size == tok.vocab_size + 13
    assert result.summary["train_loss"] < 0.5 * np.log(tok.vocab_size), result.summary

    other = make_data(tmp_path / "char")
    with pytest.raises(PipelineError, match="vocab size 39 does not match"):
        train(0, ModelConfig(), cfg(max_iters=1, init_from=str(folder)), **other)


def test_a_hugging_face_gpt2_folder_fits_gpt2_data():
    """A fetched GPT-2 folder is named by its tokenizer.json hash, gpt2 data by name: not comparable,
    so the vocabulary size decides (and must match exactly)."""
    from model.scoring import check_compatible

    manifest = {"tokenizer": "gpt2", "vocab_size": 50257, "context_length": 64}
    check_compatible(manifest, "data", 50257, 1024, "hf-0123456789abcdef", "init_from")
    with pytest.raises(PipelineError, match="vocab size 50257 does not match"):
        check_compatible(manifest, "data", 50304, 1024, "hf-0123456789abcdef", "init_from")
    with pytest.raises(PipelineError, match="data tokenized with 'hf-aaaa'"):
        check_compatible({**manifest, "tokenizer": "hf-aaaa"}, "data", 50257, 1024, "hf-bbbb", "init_from")


def test_muon_and_the_modern_layers_learn_faster_than_adamw_here(tmp_path):
    """On the tiny test data, at the same steps: a sanity check that the recipe is wired (Muon
    reaches a lower train loss), not the measurement (bench/recipe_bench.py)."""
    paths = make_data(tmp_path / "d")
    base = train(0, ModelConfig(**TINY), cfg(max_iters=40, eval_interval=0), **paths).summary
    modern = train(0, ModelConfig(**MODERN), cfg(max_iters=40, eval_interval=0, optimizer="muon"),
                   **dict(paths, out_dir=tmp_path / "m2", checkpoint_dir=tmp_path / "c2")).summary
    assert modern["train_loss"] < base["train_loss"], (modern, base)
    assert (tmp_path / "m2" / "model_config.json").is_file()
    saved = json.loads((tmp_path / "m2" / "model_config.json").read_text())
    assert saved["positions"] == "rope" and saved["qk_norm"] and saved["unet"]


def test_the_prefetcher_hands_out_the_plain_loops_batches_in_order():
    from model.runtime import Dist
    from model.stream import Prefetcher, step_data
    from pipeline.blocks import load_blocks

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        make_blocks(Path(tmp) / "b", TEXTS["code"], 30)
        blocks = load_blocks(Path(tmp) / "b")
        start = Position(step=3, epoch=1, index=5)
        stream = Prefetcher(blocks, BlockOrder(len(blocks), 7), start, 4, 2, Dist(), segments=False, pin=False)
        plain_pos = Position(3, 1, 5)
        order = BlockOrder(len(blocks), 7)
        try:
            for _ in range(12):
                got, want = stream.next(), step_data(blocks, order, plain_pos, 4, 2, Dist(), segments=False, pin=False)
                assert (got.epoch, got.index) == (want.epoch, want.index)
                for a, b in zip(got.micro_batches, want.micro_batches):
                    assert a.keys() == b.keys() == {"inputs", "targets", "loss_mask"}
                    assert all(torch.equal(a[k], b[k]) for k in a)
        finally:
            stream.close()
        assert (start.epoch, start.index) == (1, 5), "the stream walks a copy of the position"
        broken = Prefetcher(blocks, BlockOrder(len(blocks) + 1000, 7), Position(), 4, 1, Dist(), segments=True, pin=False)
        with pytest.raises(Exception):
            for _ in range(400):
                broken.next()  # rows past the index: the thread's error is raised here
        broken.close()


# ---- FSDP2 --------------------------------------------------------------------------------------


def torchrun(tmp_path: Path, spec: Path, processes: int, **popen) -> subprocess.Popen:
    """The runner under torchrun with `processes` ranks on the CPU (gloo), in a session of its own."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               str(tmp_path / "runner.py"), str(spec)]
    return subprocess.Popen(command, env=env(), cwd=REPO, start_new_session=True, **popen)


def test_fsdp_two_processes_train_like_one_unsharded_process(tmp_path):
    """Continued pretraining from a model folder, sharded over two processes with batch 4 (two
    micro-batches a step, accumulated as shards), ends within 2e-5 of one unsharded process with
    batch 8 (the same blocks each step: the sums only run in another order); the final model is
    gathered into the usual folder."""
    start = save_model(GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=2, n_head=2, n_embd=32, positions="rope")), tmp_path / "start")
    one = make_data(tmp_path / "one")
    train(0, ModelConfig(**TINY), cfg(max_iters=20, batch_size=8, grad_accum=2, eval_interval=10, init_from=str(start)), **one)
    two = make_data(tmp_path / "two")
    sharded = cfg(max_iters=20, batch_size=4, grad_accum=2, eval_interval=10, checkpoint_interval=10, init_from=str(start),
                  parallel="fsdp")
    spec = write_spec(tmp_path, "fsdp", two, TINY, sharded)
    proc = torchrun(tmp_path, spec, 2, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    a, b = weights(one["out_dir"]), weights(two["out_dir"])
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=0)
    ckpt = latest_checkpoint(two["checkpoint_dir"])
    assert (ckpt / "shards").is_dir() and not (ckpt / "model.safetensors").exists(), "a sharded checkpoint"
    assert json.loads((two["out_dir"] / "model_config.json").read_text())["positions"] == "rope"


def test_fsdp_resumes_a_killed_run_on_another_number_of_processes(tmp_path):
    """Killed after its first sharded checkpoint, a two-process run resumes on one process with the
    same global batch (DCP reshards) and ends within 2e-5 of the uninterrupted two-process run."""
    sharded = dict(max_iters=30, checkpoint_interval=5, eval_interval=0, parallel="fsdp")
    ref = make_data(tmp_path / "ref")
    spec = write_spec(tmp_path, "ref", ref, TINY, cfg(batch_size=4, **sharded))
    assert torchrun(tmp_path, spec, 2, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait(timeout=180) == 0

    run = make_data(tmp_path / "run")
    spec = write_spec(tmp_path, "run", run, TINY, cfg(batch_size=4, **sharded))
    proc = torchrun(tmp_path, spec, 2, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and latest_checkpoint(run["checkpoint_dir"]) is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers
    proc.wait()
    step = int(latest_checkpoint(run["checkpoint_dir"]).name.split("-")[1])
    assert step < 30 and not run["out_dir"].exists(), "the run was not interrupted"

    spec = write_spec(tmp_path, "run", run, TINY, cfg(batch_size=8, **sharded))
    proc = torchrun(tmp_path, spec, 1, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0 and "resuming from" in out, out[-3000:]
    a, b = weights(ref["out_dir"]), weights(run["out_dir"])
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=0)


def test_muon_is_refused_under_fsdp():
    from pipeline.errors import ConfigError
    from pipeline.typed import from_dict

    with pytest.raises(ConfigError, match="train.optimizer: muon does not run under train.parallel: fsdp"):
        from_dict(TrainConfig, {"optimizer": "muon", "parallel": "fsdp"}, "train")
