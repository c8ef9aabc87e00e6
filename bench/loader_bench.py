"""How much of a training step goes to gathering its blocks from the token stores.

    python bench/loader_bench.py data/packed/train [--batch 8] [--preset cpu-small] [--batches 300] [--steps 5]

Times what the trainer does per micro-batch to get data (`BlockOrder.take`, `Blocks.batch`, the
tensors), over `--batches` batches of a seeded permutation of the blocks, and, on the same data,
full training steps (forward, backward, clip, AdamW) of a model of `--preset` with the data's
vocabulary and context, on all cores. Prints both and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model.gpt import GPT, GPTConfig  # noqa: E402
from model.optim import adamw  # noqa: E402
from model.stream import BlockOrder, Position  # noqa: E402
from pipeline.blocks import load_blocks  # noqa: E402
from model.config import ModelConfig  # noqa: E402


def load_seconds(blocks, batch: int, batches: int) -> float:
    order, pos = BlockOrder(len(blocks), seed=0), Position()
    start = time.perf_counter()
    for _ in range(batches):
        arrays = blocks.batch(order.take(pos, batch))
        {k: torch.from_numpy(v) for k, v in arrays.items()}
    return (time.perf_counter() - start) / batches


def step_seconds(blocks, batch: int, preset: str, steps: int) -> float:
    torch.manual_seed(0)
    cfg = GPTConfig.from_params(ModelConfig(preset=preset), int(blocks.manifest["vocab_size"]), blocks.context_length)
    model = GPT(cfg)
    optimizer = adamw(model, 0.1, 1e-3, (0.9, 0.99), torch.device("cpu"))
    data = {k: torch.from_numpy(v) for k, v in blocks.batch(np.arange(batch)).items()}
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        _, loss = model(data["inputs"], targets=data["targets"], loss_mask=data["loss_mask"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("packed", type=Path)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    blocks = load_blocks(args.packed)
    store_mb = sum(s.offsets[-1] * s.dtype.itemsize for s in blocks.stores) / 1e6
    load = load_seconds(blocks, args.batch, args.batches)
    step = step_seconds(blocks, args.batch, args.preset, args.steps)
    print(f"{len(blocks):,} blocks of {blocks.context_length + 1} tokens over {store_mb:.0f} MB of stores; batch {args.batch}, "
          f"{args.preset}, {torch.get_num_threads()} threads")
    print(f"data per batch {load * 1e3:.3f} ms, training step {step * 1e3:.1f} ms: data is {load / step:.3%} of a step")


if __name__ == "__main__":
    main()
