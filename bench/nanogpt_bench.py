"""The trainer against nanoGPT's `train.py`, side by side, on nanoGPT's documented CPU run.

    python bench/nanogpt_bench.py --nanogpt DIR [--iters 2000] [--recipe-iters 1000] [--repeat 2] [--shares]

DIR is a checkout of nanoGPT (e.g. `git clone https://github.com/karpathy/nanoGPT`); the bench
copies it into a temp folder and runs its own `train.py` there. Nothing of nanoGPT is in this repo.

The run (nanoGPT's README, "I only have a macbook"): char-level, n_layer 4, n_head 4, n_embd 128,
block 64, batch 12, 2000 iterations, lr 1e-3 cosine to 1e-4 at 2000, warmup 100, beta2 0.99,
weight decay 0.1, grad clip 1, dropout 0, no biases, eval every 250 iterations, `eval_iters` 20,
CPU, no compile, all cores. tinyshakespeare cannot be downloaded here, so both read the same other
text: `pydoc_data.topics` (Python's English documentation), every topic in key order with an EOS
after each, the first 90% for training and the last 10% for validation, as characters.
- nanoGPT: `train.bin`, `val.bin` and `meta.pkl` in its `data/<name>/` format; random windows.
- ours: `model.train.train` in a fresh process on blocks of 64 + 1 characters (stride 64, what the
  `pack` stage's concat mode makes), a seeded permutation per epoch; the same evaluation cadence
  and size (every 250 steps, 480 val blocks: nanoGPT scores 20 x 12 train and 20 x 12 val windows),
  a checkpoint at every evaluation (nanoGPT saves when val improves).
- ours, modern recipe: the same size and data, `model.recipe: modern` and `train.optimizer: muon`
  (AdamW lr 3e-3 for embeddings and gains, Muon 0.02 for the hidden matrices), `--recipe-iters`
  steps (warmup scaled alike), the same evaluation cadence (every 250 steps, 480 blocks).
  `--shares` adds Muon on GPT-2's layers (the recipe's steps), and the modern layers with AdamW
  (GPT-2's recipe otherwise), to split the gain.
Each is timed from process start to exit (wall clock), with the time each evaluation line
appears (the time-to-loss curve). Reported: nanoGPT's wall time and final val loss (iteration
2000), and when each of our runs first reaches that value (at an evaluation), as a fraction of
nanoGPT's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.blocks import write_blocks  # noqa: E402
from pipeline.tokenizer import CharTokenizer  # noqa: E402

VAL_FRACTION = 0.1
CONFIG = dict(n_layer=4, n_head=4, n_embd=128, block=64, batch=12, lr=1e-3, min_lr=1e-4, warmup=100, eval_interval=250)
RECIPE_LR = 3e-3  # AdamW's LR (embeddings, gains) under the modern recipe; Muon's is train.muon_lr's default
OURS = """
import json, sys
from pathlib import Path
from model.train import train
from model.metrics import Tracker
from model.config import ModelConfig, TrainConfig
spec = json.loads(Path(sys.argv[1]).read_text())
train(1337, ModelConfig(**spec["model"]), TrainConfig(**spec["train"]), tracker=Tracker(None), **spec["paths"])
"""


def char_stream() -> tuple[CharTokenizer, np.ndarray]:
    """All topics in key order, EOS after each, as char ids (one long stream)."""
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)]
    tok = CharTokenizer("".join(sorted(set("".join(texts)))))
    parts = [np.append(tok.encode(text).astype(np.int64), tok.eos_id) for text in texts]
    return tok, np.concatenate(parts)


def write_ours(root: Path, tok: CharTokenizer, ids: np.ndarray, cut: int, context: int) -> dict:
    """A char vocab folder and block folders (train, val/prose) for `model.train`."""
    vocab = root / "vocab"
    vocab.mkdir(parents=True)
    (vocab / "spec.json").write_text(json.dumps({"kind": "char", "name": "char", "vocab_size": tok.vocab_size, "eos_id": 0, "pad_id": 0}))
    (vocab / "chars.json").write_text(json.dumps({"chars": tok.chars}))
    for name, part in (("train", ids[:cut]), ("val/prose", ids[cut:])):
        n = (len(part) - 1) // context
        rows = np.stack([part[i * context : i * context + context + 1] for i in range(n)]).astype(np.uint16)
        manifest = {"tokenizer": "char", "vocab_size": tok.vocab_size, "eos_id": 0, "pad_id": 0, "context_length": context,
                    "mode": "concat", "n_blocks": n, "n_tokens": int(rows.size), "pad_fraction": 0.0, "sources": {}, "inputs": {}}
        write_blocks(root / "packed" / name, rows, np.ones_like(rows), manifest)  # one segment: every target counts
    return {"vocab_dir": str(vocab), "train_dir": str(root / "packed/train"), "val_dir": str(root / "packed/val"),
            "out_dir": str(root / "model"), "checkpoint_dir": str(root / "checkpoints")}


def write_nanogpt(repo: Path, tok: CharTokenizer, ids: np.ndarray, cut: int) -> str:
    """The same characters in nanoGPT's `data/<name>/` format."""
    folder = repo / "data" / "tinygpt_pydoc"
    folder.mkdir(parents=True, exist_ok=True)
    ids[:cut].astype(np.uint16).tofile(folder / "train.bin")
    ids[cut:].astype(np.uint16).tofile(folder / "val.bin")
    with open(folder / "meta.pkl", "wb") as handle:
        pickle.dump({"vocab_size": tok.vocab_size}, handle)
    return folder.name


def timed_run(cmd: list[str], cwd: Path, pattern: str, env: dict) -> tuple[float, list[tuple[float, int, float]]]:
    """Wall seconds of `cmd`, and (seconds, step, val loss) for each output line matching `pattern`."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    evals = []
    for line in proc.stdout:
        match = re.search(pattern, line)
        if match:
            evals.append((time.perf_counter() - start, int(match.group(1)), float(match.group(2))))
    proc.wait()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed")
    return wall, evals


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nanogpt", type=Path, required=True, help="a nanoGPT checkout")
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--recipe-iters", type=int, default=1000, help="steps of the modern recipe's run")
    p.add_argument("--shares", action="store_true", help="also Muon alone and the modern layers alone")
    p.add_argument("--compile", action="store_true", help="ours with train.compile: true")
    args = p.parse_args()
    tok, ids = char_stream()
    cut = int(len(ids) * (1 - VAL_FRACTION))
    c = CONFIG
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="nanogpt-bench-") as tmp:
        tmp = Path(tmp)
        repo = tmp / "nanoGPT"
        shutil.copytree(args.nanogpt, repo, ignore=shutil.ignore_patterns(".git"))
        dataset = write_nanogpt(repo, tok, ids, cut)
        paths = write_ours(tmp / "ours", tok, ids, cut, c["block"])
        nano_cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", f"--dataset={dataset}", "--device=cpu",
                    "--compile=False", "--eval_iters=20", "--log_interval=1", f"--block_size={c['block']}",
                    f"--batch_size={c['batch']}", f"--n_layer={c['n_layer']}", f"--n_head={c['n_head']}", f"--n_embd={c['n_embd']}",
                    f"--max_iters={args.iters}", f"--lr_decay_iters={args.iters}", "--dropout=0.0", f"--out_dir={tmp / 'nano-out'}"]
        base_model = dict(preset=None, n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"], dropout=0.0, bias=False)
        base_train = dict(device="cpu", batch_size=c["batch"], max_iters=args.iters, lr=c["lr"], min_lr=c["min_lr"],
                          warmup_iters=c["warmup"], beta2=0.99, eval_interval=c["eval_interval"], eval_blocks=480,
                          checkpoint_interval=c["eval_interval"], log_interval=10, peak_flops=-1.0, compile=args.compile)
        recipe_train = dict(base_train, max_iters=args.recipe_iters, warmup_iters=round(c["warmup"] * args.recipe_iters / args.iters),
                            min_lr=c["min_lr"] * RECIPE_LR / c["lr"], lr=RECIPE_LR, optimizer="muon")
        ours = {"ours, GPT-2 recipe": (base_model, base_train), "ours, modern recipe": (dict(base_model, recipe="modern"), recipe_train)}
        if args.shares:
            ours["ours, Muon on GPT-2 layers"] = (base_model, recipe_train)
            ours["ours, modern layers with AdamW"] = (dict(base_model, recipe="modern"), base_train)
        (tmp / "ours.py").write_text(OURS)
        for run in range(args.repeat):
            shutil.rmtree(tmp / "nano-out", ignore_errors=True)
            nano_wall, nano_evals = timed_run(nano_cmd, repo, r"step (\d+): train loss [\d.]+, val loss ([\d.]+)", env)
            target = nano_evals[-1][2]
            rows.append(dict(run=run + 1, name="nanoGPT train.py", wall=nano_wall, val=target, reached_s=nano_wall,
                             reached_step=nano_evals[-1][1], evals=nano_evals, nano_wall=nano_wall))
            print(json.dumps(rows[-1]), flush=True)
            for name, (model, train) in ours.items():
                for folder in ("model", "checkpoints"):
                    shutil.rmtree(tmp / "ours" / folder, ignore_errors=True)
                (tmp / "spec.json").write_text(json.dumps({"model": model, "train": train, "paths": paths}))
                wall, evals = timed_run([sys.executable, str(tmp / "ours.py"), str(tmp / "spec.json")], ROOT,
                                        r"step (\d+): val loss ([\d.]+)", env)
                reached = next(((t, s) for t, s, loss in evals if loss <= target), (None, None))
                rows.append(dict(run=run + 1, name=name, wall=wall, val=evals[-1][2], reached_s=reached[0], reached_step=reached[1],
                                 evals=evals, nano_wall=nano_wall))
                print(json.dumps(rows[-1]), flush=True)
    report(rows)


def report(rows: list[dict]) -> None:
    """The side-by-side table, then each run's time-to-loss curve."""
    print("\n| run | trainer | steps | wall s | final val | reaches nanoGPT's final val at | **time to it / nanoGPT's wall** |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        when = f"step {r['reached_step']}, {r['reached_s']:.1f} s" if r["reached_s"] else "not reached"
        ratio = f"**{r['reached_s'] / r['nano_wall']:.2f}x**" if r["reached_s"] else "-"
        print(f"| {r['run']} | {r['name']} | {r['evals'][-1][1]} | {r['wall']:.1f} | {r['val']:.4f} | {when} | {ratio} |")
    print("\nTime-to-loss curves (seconds from process start, val loss) at each evaluation:\n")
    for r in rows:
        print(f"- run {r['run']}, {r['name']}: " + ", ".join(f"{s} {t:.1f}s {v:.4f}" for t, s, v in r["evals"]))


if __name__ == "__main__":
    main()
