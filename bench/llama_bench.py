"""The Llama layout beside GPT-2 on CPU: training and KV-cache generation speed, and our generation
against `transformers`' `generate` on the same weights.

    python bench/llama_bench.py [--batch 1] [--seq 256] [--steps 3] [--new 48] [--repeat 2] [--threads 2]

Models, random weights (seed 0; speed does not depend on the values): a SmolLM2-135M-shaped Llama
(the `smollm2-135m` preset: 30 layers, 9 heads, 3 kv heads, 576 wide, SwiGLU 1536, vocab 49152,
tied) and GPT-2 124M (12/12/768, vocab 50257, tied). fp32 throughout.
- train: forward + backward + AdamW step (model.optim.adamw, fused) on `--batch` x `--seq` random
  tokens; two untimed warm-up steps, then the mean of `--steps` timed steps. tokens/s = batch*seq / s.
- generate: batch 1, a random 16-token prompt, `--new` new tokens, greedy, no EOS stop, with the KV
  cache; ours (`model.generate`) and transformers' (`generate(do_sample=False)` on the folder our
  `model.folders.write_hf` writes, loaded with AutoModelForCausalLM). One untimed short warm-up each, then
  `--repeat` timed runs, interleaved, best kept; tokens/s = new tokens / s (prompt included). The
  two must produce the same token ids (checked; the script fails otherwise).
"other procs (cores)": CPU time used by OTHER processes during the run / its wall time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from machine import busy_seconds, load, own_seconds  # noqa: E402
from model.gpt import GPT, GPTConfig  # noqa: E402
from model.folders import write_hf  # noqa: E402
from model.llama import Llama, LlamaConfig  # noqa: E402
from model.optim import adamw  # noqa: E402
from model.config import LLAMA_PRESETS, MODEL_PRESETS  # noqa: E402

PROMPT_LEN = 16


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "smollm2-135m":
        return Llama(LlamaConfig(vocab_size=49152, block_size=2048, tie_weights=True, **LLAMA_PRESETS[name]))
    return GPT(GPTConfig(vocab_size=50257, block_size=1024, **MODEL_PRESETS[name]))


def train_speed(model, batch: int, seq: int, steps: int) -> float:
    """Training tokens/s: mean over `steps` timed steps after two warm-up steps (the second is still slow)."""
    model.train()
    optimizer = adamw(model, weight_decay=0.1, lr=1e-4, betas=(0.9, 0.95), device=torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, model.config.vocab_size, (steps + 2, batch, seq + 1), generator=g)
    seconds = 0.0
    for i in range(steps + 2):
        start = time.perf_counter()
        _, loss = model(data[i, :, :-1], targets=data[i, :, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if i >= 2:
            seconds += time.perf_counter() - start
    del optimizer
    model.eval()
    return batch * seq * steps / seconds


def generate_speed(model, new: int, repeat: int) -> tuple[float, float]:
    """Generation tokens/s with the KV cache: ours and transformers' on the same weights (same ids asserted)."""
    import transformers

    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        write_hf(model, Path(tmp))
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp).eval()
    hf.generation_config.eos_token_id = None  # no EOS stop, as ours
    hf.generation_config.pad_token_id = 0
    prompt = torch.randint(0, model.config.vocab_size, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(2))

    def ours(n: int) -> torch.Tensor:
        return model.generate(prompt, n, temperature=0.0)

    def theirs(n: int) -> torch.Tensor:
        with torch.no_grad():
            return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, do_sample=False)

    best = {ours: float("inf"), theirs: float("inf")}
    outs = {}
    for run in best:
        run(4)  # warm-up
    for _ in range(repeat):
        for run in best:
            start = time.perf_counter()
            outs[run] = run(new)
            best[run] = min(best[run], time.perf_counter() - start)
    if not torch.equal(outs[ours], outs[theirs]):
        raise SystemExit(f"{type(model).__name__}: our greedy tokens differ from transformers'")
    return new / best[ours], new / best[theirs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["smollm2-135m", "gpt2"], choices=["smollm2-135m", "gpt2"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--new", type=int, default=48)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import transformers

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, load average {load()}")
    print(f"train: batch {args.batch} x {args.seq} tokens, mean of {args.steps} steps after 2 warm-up; "
          f"generate: batch 1, prompt {PROMPT_LEN}, {args.new} new tokens, greedy, KV cache, best of {args.repeat}\n")
    print("| model | params | train tokens/s | generate tokens/s (ours) | generate tokens/s (transformers) | ours / transformers | same tokens | other procs (cores) | seconds |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for name in args.models:
        t0, busy0, own0 = time.perf_counter(), busy_seconds(), own_seconds()
        model = build(name)
        train = train_speed(model, args.batch, args.seq, args.steps)
        ours, theirs = generate_speed(model, args.new, args.repeat)
        wall = time.perf_counter() - t0
        other = max(0.0, (busy_seconds() - busy0) - (own_seconds() - own0)) / wall
        print(f"| {name} | {model.num_params(non_embedding=False) / 1e6:.1f}M | {train:.0f} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}x | yes "
              f"| {other:.2f} | {wall:.0f} |", flush=True)
    print(f"\nload average at the end: {load()}")


if __name__ == "__main__":
    main()
