"""The trainer against nanoGPT's `train.py`, side by side, on nanoGPT's documented CPU run.

    python bench/nanogpt_bench.py --nanogpt DIR [--iters 2000] [--repeat 2]

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
Both are timed from process start to exit (wall clock), with the time each evaluation line
appears. Reported: nanoGPT's wall time and final val loss (iteration 2000), and when our trainer's
val loss first reaches that value (at an evaluation), as a fraction of nanoGPT's wall time.
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
OURS = """
import json, sys
from pathlib import Path
from model.train import train
from model.metrics import Tracker
from pipeline.config import ModelConfig, TrainConfig
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
        spec = {"model": dict(preset=None, n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"], dropout=0.0, bias=False),
                "train": dict(device="cpu", batch_size=c["batch"], max_iters=args.iters, lr=c["lr"], min_lr=c["min_lr"],
                              warmup_iters=c["warmup"], beta2=0.99, eval_interval=c["eval_interval"], eval_blocks=480,
                              checkpoint_interval=c["eval_interval"], log_interval=10, peak_flops=-1.0, compile=args.compile),
                "paths": paths}
        (tmp / "spec.json").write_text(json.dumps(spec))
        (tmp / "ours.py").write_text(OURS)
        for run in range(args.repeat):
            shutil.rmtree(tmp / "nano-out", ignore_errors=True)
            nano_wall, nano_evals = timed_run(nano_cmd, repo, r"step (\d+): train loss [\d.]+, val loss ([\d.]+)", env)
            for name in ("model", "checkpoints"):
                shutil.rmtree(tmp / "ours" / name, ignore_errors=True)
            ours_wall, ours_evals = timed_run([sys.executable, str(tmp / "ours.py"), str(tmp / "spec.json")], ROOT,
                                              r"step (\d+): val loss ([\d.]+)", env)
            target = nano_evals[-1][2]
            reached = next(((t, s) for t, s, loss in ours_evals if loss <= target), (None, None))
            rows.append(dict(run=run + 1, nano_wall=nano_wall, nano_val=target, ours_wall=ours_wall, ours_val=ours_evals[-1][2],
                             reached_s=reached[0], reached_step=reached[1], nano_evals=nano_evals, ours_evals=ours_evals))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| run | nanoGPT wall s | nanoGPT val (2000) | ours: wall s | ours: val (2000) | ours reaches nanoGPT's val at | **time to nanoGPT's val / nanoGPT's wall** |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        when = f"step {r['reached_step']}, {r['reached_s']:.1f} s" if r["reached_s"] else "not reached"
        ratio = f"**{r['reached_s'] / r['nano_wall']:.2f}x**" if r["reached_s"] else "-"
        print(f"| {r['run']} | {r['nano_wall']:.1f} | {r['nano_val']:.4f} | {r['ours_wall']:.1f} | {r['ours_val']:.4f} | {when} | {ratio} |")


if __name__ == "__main__":
    main()
