"""Generation speed with and without the KV cache (`GPT.generate(..., use_cache=True/False)`).

    python bench/generate_bench.py [--models cpu-small cpu-medium] [--prompt-len 16] [--new 200]
                                   [--vocab-size 50257] [--block-size 256] [--repeat 3] [--threads 2]

For each model size: a GPT with random weights (seed 0; the speed does not depend on the values),
GPT-2's vocabulary size by default and a block size of 256 (so prompt + new tokens fit and the cache
never has to fall back to re-encoding a sliding window), batch 1, a random prompt of
`--prompt-len` tokens, `--new` new tokens, greedy (temperature 0), no EOS stop. One untimed warm-up
generation per mode, then `--repeat` timed runs of each mode, interleaved; the best time of each
is reported (the machine may be shared). tokens/s = new tokens / seconds (prompt encoding
included). The two modes must produce identical token ids (checked on every run).
"other procs (cores)": CPU time used by OTHER processes during the timed runs / their wall time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from model.gpt import GPT, GPTConfig  # noqa: E402
from model.config import MODEL_PRESETS as PRESETS  # noqa: E402
from machine import busy_seconds, load, own_seconds  # noqa: E402




def timed(model: GPT, prompt: torch.Tensor, new: int, use_cache: bool) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = model.generate(prompt, new, temperature=0.0, use_cache=use_cache)
    return time.perf_counter() - start, out


def bench(preset: str, args) -> dict:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size, **PRESETS[preset])
    model = GPT(cfg).eval()
    prompt = torch.randint(0, args.vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(1))
    timed(model, prompt, 8, True)  # warm-up (allocator, kernels)
    timed(model, prompt, 8, False)
    best = {True: float("inf"), False: float("inf")}
    outs = {}
    t0, busy0, own0 = time.perf_counter(), busy_seconds(), own_seconds()
    for _ in range(args.repeat):
        for use_cache in (True, False):
            seconds, out = timed(model, prompt, args.new, use_cache)
            best[use_cache] = min(best[use_cache], seconds)
            outs.setdefault(use_cache, out)
            if not torch.equal(out, outs[use_cache]):
                raise SystemExit(f"{preset}: generation is not deterministic (use_cache={use_cache})")
    other = max(0.0, (busy_seconds() - busy0) - (own_seconds() - own0)) / (time.perf_counter() - t0)
    identical = torch.equal(outs[True], outs[False])
    if not identical:
        raise SystemExit(f"{preset}: outputs with and without the KV cache differ")
    return dict(
        preset=preset, shape=f"{cfg.n_layer}/{cfg.n_head}/{cfg.n_embd}", params=model.num_params(),
        cached=args.new / best[True], uncached=args.new / best[False], identical=identical, other=other,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["cpu-small", "cpu-medium"], choices=sorted(PRESETS))
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new", type=int, default=200)
    p.add_argument("--vocab-size", type=int, default=50257, help="default: GPT-2's")
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.prompt_len + args.new > args.block_size:
        print(f"note: prompt + new = {args.prompt_len + args.new} > block size {args.block_size}: once the cache is "
              "full, both modes re-encode the last block_size tokens at every step")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, load average {load()}")
    print(f"batch 1, prompt {args.prompt_len} tokens, {args.new} new tokens, greedy, vocab {args.vocab_size}, "
          f"block {args.block_size}, best of {args.repeat}\n")
    print("| model | n_layer/n_head/n_embd | params | tokens/s with KV cache | tokens/s without | speed-up | outputs identical | other procs (cores) |")
    print("|---|---|---:|---:|---:|---:|---|---:|")
    for preset in args.models:
        r = bench(preset, args)
        print(f"| {r['preset']} | {r['shape']} | {r['params'] / 1e6:.2f}M | {r['cached']:.0f} | {r['uncached']:.0f} | "
              f"{r['cached'] / r['uncached']:.2f}x | {'yes' if r['identical'] else 'NO'} | {r['other']:.2f} |", flush=True)
    print(f"\nload average at the end: {load()}")


if __name__ == "__main__":
    main()
