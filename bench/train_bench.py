"""Training throughput benchmarks through the project's real trainer (`model.train.train`).

    python bench/train_bench.py [--iters 2000] [--repeat 2] [--medium-iters 12] [--skip-small] [--skip-medium]

Parts:

(a) nanoGPT's documented CPU run, same config: char-level, n_layer 4, n_head 4, n_embd 128,
    block 64, batch 12, `--iters` iterations (default 2000), lr 1e-3 -> min_lr 1e-4 (cosine to the
    last iteration), warmup 100, beta2 0.99, weight decay 0.1, grad clip 1.0, dropout 0, no bias
    (nanoGPT's default), tied embeddings, 2 torch threads, W&B off, one evaluation and one
    checkpoint at the end only. tinyshakespeare cannot be downloaded here, so the corpus is the
    English prose of `pydoc_data.topics` (shipped with Python): every topic in key order, an EOS
    after each, the first 90% of that character stream for training, the last 10% for validation
    (as nanoGPT splits tinyshakespeare), cut into blocks of 64 + 1 tokens with stride 64 (as the
    `pack` stage's concat mode does) and written with `pipeline.blocks.write_blocks`.
    The val loss is NOT comparable to nanoGPT's 1.886 on tinyshakespeare (other text, 103
    characters instead of 65). Reported: wall time of the whole `train(...)` call (model build,
    2000 steps, final eval over all val blocks, final checkpoint and model write), tokens/s over
    that wall time, and the trainer's own tokens/s (median of its log windows: steps only).
    `--compile` runs (a) with `train.compile: true` (the compile time is inside the wall time).
    Reference row: the same model, optimizer, schedule and batches in a bare PyTorch loop
    (`--bare-iters`, default 300, after 10 warm-up iterations), to show the trainer's overhead.
(b) At a larger size (cpu-medium: n_layer 6, n_head 6, n_embd 384, block 256, batch 8, char vocab,
    same corpus): the trainer's tokens/s, times the trainer's FLOPs/token (6N + 12 L C T, the
    estimate its MFU uses), over the machine's best measured fp32 matmul FLOP/s (square matmuls of
    1024, 2048 and 4096, measured before and after the training run; the trainer's own
    `measure_matmul_flops` is reported too). That ratio is what the trainer prints as MFU on CPU
    when `train.peak_flops` is set to the measured peak.
The GPU side (GPT-2 124M in bf16 with compile, and more) is `bench/gpu_check.py`.

"other procs (cores)": CPU time that OTHER processes used during the run, divided by its wall time
(/proc/stat minus this process), i.e. how much of the 2 cores was taken from the benchmark.
Every timed run uses fresh temp folders (no resume). Prints markdown tables; writes only to a
temp dir. `--json PATH` also dumps the raw numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from model.config import MODEL_PRESETS as PRESETS  # noqa: E402
from model.metrics import Tracker  # noqa: E402
from model.optim import adamw  # noqa: E402
from model.runtime import measure_matmul_flops  # noqa: E402
from model.train import train  # noqa: E402
from pipeline.blocks import write_blocks  # noqa: E402
from model.config import ModelConfig, TrainConfig  # noqa: E402
from pipeline.tokenizer import CharTokenizer  # noqa: E402
from machine import busy_seconds, load, own_seconds  # noqa: E402

SEED = 1337
VAL_FRACTION = 0.1  # nanoGPT's split of tinyshakespeare
NANOGPT = dict(n_layer=4, n_head=4, n_embd=128, block=64, batch=12)
NANOGPT_REF_S = 95.0  # nanoGPT's documented run on this machine kind (DESIGN.md)
NANOGPT_REF_LOSS = 1.886  # on tinyshakespeare: not comparable to the corpus used here


# ---------------------------------------------------------------- data

def char_stream() -> tuple[CharTokenizer, np.ndarray]:
    """All topics in key order, EOS after each, as char ids (one long stream)."""
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)]
    tok = CharTokenizer("".join(sorted(set("".join(texts)))))
    parts = []
    for text in texts:
        parts.append(tok.encode(text).astype(np.int64))
        parts.append(np.array([tok.eos_id], dtype=np.int64))
    return tok, np.concatenate(parts)


def write_split(path: Path, ids: np.ndarray, context: int, tok: CharTokenizer, source: str) -> int:
    """Blocks of context + 1 tokens, stride context (concat packing), into a block folder."""
    n = (len(ids) - 1) // context
    rows = np.stack([ids[i * context : i * context + context + 1] for i in range(n)]).astype(np.uint16)
    # segment ids: 1 for the block's first document, +1 after each EOS (loss mask: all positions count)
    is_eos = rows == tok.eos_id
    segments = (1 + np.concatenate([np.zeros((n, 1), dtype=np.int64), np.cumsum(is_eos, axis=1)[:, :-1]], axis=1))
    manifest = {
        "tokenizer": "char", "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "pad_id": tok.pad_id,
        "context_length": context, "mode": "concat", "n_blocks": n, "n_tokens": int(rows.size),
        "pad_fraction": 0.0, "sources": {source: {"docs": int(is_eos.sum()), "tokens": int(rows.size)}}, "inputs": {},
    }
    write_blocks(path, rows, segments.astype(np.uint16), manifest)
    return n


def make_char_data(root: Path, context: int) -> dict:
    """Char vocab folder + train blocks + val/prose blocks from pydoc_data.topics."""
    tok, ids = char_stream()
    cut = int(len(ids) * (1 - VAL_FRACTION))
    vocab = root / "vocab"
    vocab.mkdir(parents=True)
    (vocab / "spec.json").write_text(json.dumps({"kind": "char", "name": "char", "vocab_size": tok.vocab_size, "eos_id": 0, "pad_id": 0}))
    (vocab / "chars.json").write_text(json.dumps({"chars": tok.chars}))
    n_train = write_split(root / "packed/train", ids[:cut], context, tok, "prose")
    n_val = write_split(root / "packed/val/prose", ids[cut:], context, tok, "prose")
    return dict(vocab_dir=vocab, train_dir=root / "packed/train", val_dir=root / "packed/val",
                info=dict(chars=len(ids), vocab_size=tok.vocab_size, train_blocks=n_train, val_blocks=n_val))


def make_random_data(root: Path, context: int, vocab_size: int, id_range: int, n_blocks: int) -> dict:
    """Uniformly random token ids (throughput only), one long document per block."""
    rng = np.random.default_rng(0)
    dtype = np.uint16 if vocab_size <= 1 << 16 else np.uint32

    def one(path: Path, n: int) -> None:
        rows = rng.integers(0, id_range, size=(n, context + 1)).astype(dtype)
        manifest = {
            "tokenizer": "random", "vocab_size": vocab_size, "eos_id": 0, "pad_id": 0, "context_length": context,
            "mode": "concat", "n_blocks": n, "n_tokens": int(rows.size), "pad_fraction": 0.0, "sources": {}, "inputs": {},
        }
        write_blocks(path, rows, np.ones_like(rows), manifest)

    one(root / "packed/train", n_blocks)
    one(root / "packed/val/random", 8)
    return dict(vocab_dir=None, train_dir=root / "packed/train", val_dir=root / "packed/val")


# ---------------------------------------------------------------- running the trainer

def run_train(data: dict, model_cfg: ModelConfig, cfg: TrainConfig, quiet: bool = True) -> dict:
    """One fresh `train(...)` call (new out/checkpoint folders: nothing to resume); its wall time and numbers."""
    with tempfile.TemporaryDirectory(prefix="train-bench-run-") as tmp:
        tracker = Tracker(Path(tmp) / "metrics", timing_file=Path(tmp) / "timing.json")  # W&B disabled
        sink = io.StringIO()
        redirect = contextlib.redirect_stderr(sink) if quiet else contextlib.nullcontext()  # the tqdm bar
        start = time.perf_counter()
        with redirect, OtherLoad() as other:
            result = train(
                SEED, model_cfg, cfg, train_dir=data["train_dir"], val_dir=data["val_dir"],
                out_dir=Path(tmp) / "model", checkpoint_dir=Path(tmp) / "checkpoints",
                vocab_dir=data["vocab_dir"], tracker=tracker,
            )
        wall = time.perf_counter() - start
        timing = json.loads((Path(tmp) / "timing.json").read_text())
    s = result.summary
    return dict(
        wall_s=wall,
        steps=s["step"],
        tokens=s["tokens_seen"],
        params=s["params"],
        flops_per_token=result.model.flops_per_token(),
        tokens_per_s_wall=s["tokens_seen"] / wall,
        tokens_per_s_steps=timing["tokens_per_s"],
        mfu=timing["mfu"],
        train_loss=s.get("train_loss"),
        val_loss=s.get("val_loss"),
        other_cores=other.cores,
    )


def bare_loop(data: dict, model_cfg: ModelConfig, cfg: TrainConfig, iters: int, warmup: int = 10) -> dict:
    """Reference: the same model, optimizer, schedule and batches in a bare PyTorch loop (nanoGPT's
    loop: forward, backward, clip, step; no loss mask, no progress bar, no logging). Steps/s only."""
    from model.gpt import GPT, GPTConfig
    from model.stream import BlockOrder, Position
    from model.train import lr_at
    from pipeline.blocks import load_blocks

    torch.set_num_threads(cfg.threads)
    blocks = load_blocks(data["train_dir"])
    torch.manual_seed(SEED)
    model = GPT(GPTConfig.from_params(model_cfg, int(blocks.manifest["vocab_size"]), blocks.context_length))
    opt = adamw(model, cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), torch.device("cpu"))
    order, pos = BlockOrder(len(blocks), SEED), Position()
    model.train()
    with OtherLoad() as other:
        for i in range(warmup + iters):
            if i == warmup:
                start = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = lr_at(i, cfg)
            b = blocks.batch(order.take(pos, cfg.batch_size))
            _, loss = model(torch.from_numpy(b["inputs"]), targets=torch.from_numpy(b["targets"]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad()
            loss.item()
        wall = time.perf_counter() - start
    return dict(iters=iters, wall_s=wall, tokens_per_s=iters * cfg.batch_size * blocks.context_length / wall,
                other_cores=other.cores)


def nanogpt_cfg(iters: int, peak: float, compile: bool = False) -> tuple[ModelConfig, TrainConfig]:
    model_cfg = ModelConfig(preset=None, n_layer=NANOGPT["n_layer"], n_head=NANOGPT["n_head"], n_embd=NANOGPT["n_embd"],
                            dropout=0.0, bias=False, tie_weights=True)
    cfg = TrainConfig(
        device="cpu", batch_size=NANOGPT["batch"], grad_accum=1, max_iters=iters, lr=1e-3, min_lr=1e-4,
        warmup_iters=100, weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0,
        eval_interval=0, eval_blocks=0, checkpoint_interval=0, compile=compile, threads=2,
        log_interval=100, peak_flops=peak,
    )
    return model_cfg, cfg


# ---------------------------------------------------------------- matmul peak

def matmul_flops(n: int, seconds: float = 1.0) -> float:
    """Best fp32 FLOP/s of an n x n @ n x n matmul on CPU over about `seconds`."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen)
    b = torch.randn(n, n, generator=gen)
    a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def matmul_peaks() -> dict:
    out = {f"square {n}": matmul_flops(n) for n in (1024, 2048, 4096)}
    out["measure_matmul_flops (trainer, n=1024, 0.3 s)"] = measure_matmul_flops(torch.device("cpu"))
    return out


# ---------------------------------------------------------------- parts



class OtherLoad:
    """How busy the machine was with OTHER processes during a span, in cores (0 = had it to ourselves).

    (all CPU time used on the machine - this process's) / wall time. Unlike the load average it
    does not count this benchmark's own threads.
    """

    def __enter__(self):
        self._t, self._busy, self._own = time.perf_counter(), busy_seconds(), own_seconds()
        return self

    def __exit__(self, *_):
        wall = time.perf_counter() - self._t
        self.cores = max(0.0, (busy_seconds() - self._busy) - (own_seconds() - self._own)) / wall if wall > 0 else 0.0


def part_a(args, peak: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="train-bench-a-") as tmp:
        data = make_char_data(Path(tmp), NANOGPT["block"])
        info = data["info"]
        print(f"\n(a) corpus pydoc_data.topics: {info['chars']} chars, vocab {info['vocab_size']} "
              f"(EOS, UNK + characters), {info['train_blocks']} train / {info['val_blocks']} val blocks of 64", flush=True)
        runs, bares = [], []
        for r in range(args.repeat):
            print(f"    run {r + 1}/{args.repeat}: {args.iters} iters through model.train.train ...", flush=True)
            res = run_train(data, *nanogpt_cfg(args.iters, peak, args.compile), quiet=not args.verbose)
            print(f"      {res['wall_s']:.1f} s, val loss {res['val_loss']:.4f}, {res['tokens_per_s_steps']:.0f} tok/s "
                  f"(steps), other processes used {res['other_cores']:.2f} cores", flush=True)
            runs.append(res)
            if args.bare_iters > 0:
                bare = bare_loop(data, *nanogpt_cfg(args.iters, peak), iters=args.bare_iters)
                print(f"      bare loop: {bare['tokens_per_s']:.0f} tok/s over {bare['iters']} iters, "
                      f"other processes used {bare['other_cores']:.2f} cores", flush=True)
                bares.append(bare)
    best = min(runs, key=lambda r: r["wall_s"])
    scale = 2000 / args.iters
    note = " (extrapolated)" if args.iters != 2000 else ""
    print("\n| run | iters | params | wall s | s per 2000 iters | vs nanoGPT ~95 s | tokens/s (wall) | tokens/s (steps) "
          "| CPU MFU | train loss | val loss | other procs (cores) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, r in enumerate(runs):
        per2000 = r["wall_s"] * scale
        print(f"| {i + 1}{' (best)' if r is best else ''} | {r['steps']} | {r['params'] / 1e6:.2f}M | {r['wall_s']:.1f} | "
              f"{per2000:.1f}{note} | {NANOGPT_REF_S / per2000:.2f}x | {r['tokens_per_s_wall']:.0f} | "
              f"{r['tokens_per_s_steps']:.0f} | {r['flops_per_token'] * r['tokens_per_s_steps'] / peak:.1%} | {r['train_loss']:.4f} | {r['val_loss']:.4f} | "
              f"{r['other_cores']:.2f} |")
    if bares:
        print("\n| bare loop (reference) | iters | tokens/s | s per 2000 iters | other procs (cores) |")
        print("|---|---:|---:|---:|---:|")
        top = max(bares, key=lambda b: b["tokens_per_s"])
        for i, b in enumerate(bares):
            print(f"| {i + 1}{' (best)' if b is top else ''} | {b['iters']} | {b['tokens_per_s']:.0f} | "
                  f"{2000 * NANOGPT['batch'] * NANOGPT['block'] / b['tokens_per_s']:.1f} | {b['other_cores']:.2f} |")
    return dict(info=info, runs=runs, bare=bares)


def part_b(args, peaks_before: dict) -> dict:
    L, H, C = (PRESETS["cpu-medium"][k] for k in ("n_layer", "n_head", "n_embd"))
    block, batch = 256, 8
    with tempfile.TemporaryDirectory(prefix="train-bench-b-") as tmp:
        data = make_char_data(Path(tmp), block)
        model_cfg = ModelConfig(preset="cpu-medium", dropout=0.0, bias=True, tie_weights=True)
        runs = []
        for r in range(args.repeat):
            peak_now = max(peaks_before.values())
            cfg = TrainConfig(device="cpu", batch_size=batch, max_iters=args.medium_iters, lr=1e-3, min_lr=1e-4,
                              warmup_iters=2, eval_interval=0, eval_blocks=1, checkpoint_interval=0, threads=2,
                              log_interval=args.medium_iters, peak_flops=peak_now)
            print(f"\n(b) run {r + 1}/{args.repeat}: cpu-medium {L}/{H}/{C}, block {block}, batch {batch}, "
                  f"{args.medium_iters} iters ...", flush=True)
            res = run_train(data, model_cfg, cfg, quiet=not args.verbose)
            print(f"      {res['tokens_per_s_steps']:.0f} tok/s (steps 2..{res['steps']}), "
                  f"other processes used {res['other_cores']:.2f} cores", flush=True)
            runs.append(res)
    peaks_after = matmul_peaks()
    peaks = {k: max(peaks_before[k], peaks_after[k]) for k in peaks_before}
    peak = max(peaks.values())
    best = max(runs, key=lambda r: r["tokens_per_s_steps"])
    achieved = best["flops_per_token"] * best["tokens_per_s_steps"]
    print("\nfp32 matmul FLOP/s on this CPU (2 threads; best of before/after the training runs):\n")
    print("| matmul | GFLOP/s |")
    print("|---|---:|")
    for k, v in peaks.items():
        print(f"| {k} | {v / 1e9:.1f} |")
    print("\n| model | params | FLOPs/token | tokens/s (steps) | achieved GFLOP/s | matmul peak GFLOP/s | achieved / peak | achieved / trainer's 1024 measure | other procs (cores) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    trainer_peak = peaks["measure_matmul_flops (trainer, n=1024, 0.3 s)"]
    for r in runs:
        a = r["flops_per_token"] * r["tokens_per_s_steps"]
        print(f"| cpu-medium {L}/{H}/{C}, T {block}, B {batch}, char vocab{' (best)' if r is best else ''} | "
              f"{r['params'] / 1e6:.2f}M | {r['flops_per_token'] / 1e6:.1f}M | {r['tokens_per_s_steps']:.0f} | "
              f"{a / 1e9:.1f} | {peak / 1e9:.1f} | {a / peak:.1%} | {a / trainer_peak:.1%} | {r['other_cores']:.2f} |")
    return dict(runs=runs, peaks=peaks, peak=peak, achieved=achieved, ratio=achieved / peak)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=2000, help="(a) iterations; the table extrapolates to 2000")
    p.add_argument("--medium-iters", type=int, default=12, help="(b) iterations (the first is not timed)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each part (best reported)")
    p.add_argument("--bare-iters", type=int, default=300, help="(a) reference bare loop iterations per run (0: off)")
    p.add_argument("--compile", action="store_true", help="(a) with train.compile: true (torch.compile on CPU)")
    p.add_argument("--skip-small", action="store_true", help="skip (a)")
    p.add_argument("--skip-medium", action="store_true", help="skip (b)")
    p.add_argument("--verbose", action="store_true", help="show the trainer's progress bar")
    p.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = p.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {load()}", flush=True)
    out: dict = {}
    torch.set_num_threads(2)
    peaks = matmul_peaks()
    peak = max(peaks.values())
    print(f"fp32 matmul peak (best square matmul, 2 threads): {peak / 1e9:.1f} GFLOP/s", flush=True)
    if not args.skip_small:
        out["a"] = part_a(args, peak)
    if not args.skip_medium:
        out["b"] = part_b(args, peaks)
    print(f"\nload average at the end: {load()}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
