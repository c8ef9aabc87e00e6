"""Where a Muon step's time goes on this CPU, and what the orthogonalisation's dtype costs.

    python bench/muon_bench.py [--threads 2] [--steps 40]

For nanoGPT's CPU size (4 layers, 128 wide, block 64, batch 12, 105 characters) and the default
run's (cpu-base: 6 layers, 192 wide, block 256, batch 16, 4,096 tokens), random data, a GPT with
GPT-2's layers: the median ms of forward, backward and the optimizer step (with clipping) over
`--steps` steps after 5 warm-up ones, for AdamW and for Muon + AdamW with the Newton–Schulz
iteration in fp32 and in bf16; then the orthogonalisation alone, batched as `model.optim.Muon`
runs it (one batched call per matrix shape), against torch.optim.Muon's own step (bf16, one
matrix at a time).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from model.gpt import GPT, GPTConfig  # noqa: E402
from model.optim import adamw, muon, orthogonalisation_dtype  # noqa: E402
from model.config import TrainConfig  # noqa: E402

SIZES = {
    "nanoGPT CPU (4/4/128, 12 x 64)": dict(n_layer=4, n_head=4, n_embd=128, block=64, batch=12, vocab=105),
    "cpu-base (6/6/192, 16 x 256)": dict(n_layer=6, n_head=6, n_embd=192, block=256, batch=16, vocab=4096),
}


def model_for(size: dict) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=size["vocab"], block_size=size["block"], n_layer=size["n_layer"], n_head=size["n_head"],
                         n_embd=size["n_embd"], bias=False))


def timed_steps(size: dict, optimizer: str, ns_dtype, steps: int) -> dict:
    model = model_for(size)
    cpu = torch.device("cpu")
    if optimizer == "adamw":
        opt = adamw(model, 0.1, 1e-3, (0.9, 0.99), cpu)
    else:
        opt = muon(model, TrainConfig(optimizer="muon"), cpu)
        opt.optimizers["muon"].ns_dtype = ns_dtype
    x = torch.randint(0, size["vocab"], (size["batch"], size["block"]), generator=torch.Generator().manual_seed(1))
    parts = {"forward": [], "backward": [], "step": []}
    for i in range(5 + steps):
        t0 = time.perf_counter()
        _, loss = model(x, targets=x)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        t3 = time.perf_counter()
        if i >= 5:
            for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
                parts[name].append(seconds)
    return {name: 1e3 * statistics.median(v) for name, v in parts.items()}


def orthogonalisation_ms(size: dict, steps: int) -> dict:
    """Our batched NS (fp32, bf16) against torch.optim.Muon's step on the same matrices."""
    model = model_for(size)
    matrices = model.hidden_matrices()
    out = {}
    for name, dtype in (("ours, fp32", torch.float32), ("ours, bf16", torch.bfloat16)):
        opt = muon(model, TrainConfig(optimizer="muon"), torch.device("cpu")).optimizers["muon"]
        opt.ns_dtype = dtype
        out[name] = time_optimizer(opt, [p for p, _ in matrices], steps)
    reference = torch.optim.Muon([p for p, _ in matrices], lr=0.02)
    out["torch.optim.Muon (bf16, per matrix, q/k/v fused)"] = time_optimizer(reference, [p for p, _ in matrices], steps)
    return out


def time_optimizer(opt, params, steps: int) -> float:
    for p in params:
        p.grad = torch.randn_like(p)
    times = []
    for i in range(3 + steps):
        start = time.perf_counter()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    print(f"torch {torch.__version__}, {args.threads} threads, {caps.get('cpu_name', '?')}, AMX bf16: {caps.get('amx_bf16')}, "
          f"orthogonalisation dtype chosen here: {orthogonalisation_dtype(torch.device('cpu'))}\n")
    print("| size | optimizer | forward ms | backward ms | clip + step ms | step total ms |")
    print("|---|---|---:|---:|---:|---:|")
    for label, size in SIZES.items():
        for name, optimizer, dtype in (("AdamW", "adamw", None), ("Muon, NS in fp32", "muon", torch.float32),
                                       ("Muon, NS in bf16", "muon", torch.bfloat16)):
            t = timed_steps(size, optimizer, dtype, args.steps)
            print(f"| {label} | {name} | {t['forward']:.2f} | {t['backward']:.2f} | {t['step']:.2f} | {sum(t.values()):.2f} |", flush=True)
    print("\n| size | Muon's update of every hidden matrix | ms |")
    print("|---|---|---:|")
    for label, size in SIZES.items():
        for name, ms in orthogonalisation_ms(size, args.steps).items():
            print(f"| {label} | {name} | {ms:.2f} |", flush=True)


if __name__ == "__main__":
    main()
