"""The `train` stage: pretraining on the packed blocks, resumable, single process or DDP.

`python -m model.train` (or `torchrun --nproc_per_node N -m model.train`) reads
`data/packed/train/` and `data/packed/val/<source>/` (indices over the memory-mapped token
stores) and writes
- `data/model/`: the final model (`model.safetensors`, `model_config.json`), a copy of
  `data/vocab` as `tokenizer/`, and the train data's manifest as `train_manifest.json`;
- `data/checkpoints/step-NNNNNNNN/`: the latest checkpoint (`model.checkpoint`). A new run with the
  same fingerprint (params that change the math, world size, data manifests, code) resumes from it
  and ends with the same weights, bit for bit on CPU, as an uninterrupted run;
- the metrics of `model.metrics`: DVCLive in `metrics/train/`, the timing file, a W&B run.

Data order: a seeded permutation of all blocks per epoch; the position is (epoch, index into it).
Each optimizer step takes world_size * batch_size * grad_accum blocks from the stream, rank r the
r-th slice of every micro-batch, so ranks read disjoint blocks.

MFU = flops_per_token * tokens/s per device / peak FLOP/s per device (`model.runtime.peak_flops`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from model.checkpoint import STATE_FORMAT, fingerprint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from model.metrics import Tracker, manifest_hashes, mixture_tags, run_config
from model.optim import adamw, optimizer_step, warmup_cosine
from model.runtime import (
    Dist, all_reduce_sum, autocast_for, gather, init_distributed, peak_flops, prepare, set_threads, shutdown,
)
from model.scoring import check_compatible, folder_tokenizer, load_val_sets, score_blocks, spread_rows, tokenizer_name
from pipeline.blocks import Blocks, load_blocks
from pipeline.config import ModelConfig, TrainConfig, load_params
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_dir, write_json
from pipeline.paths import (
    CHECKPOINT_DIR, MANIFEST_FILE, METRICS_DIR, MODEL_DIR, TRAIN_BLOCKS, TRAIN_MANIFEST_FILE, VAL_BLOCKS, VOCAB_DIR, WANDB_DIR,
)

# train.* keys that do not change the trajectory: a checkpoint stays resumable when only these change
OPERATIONAL_KEYS = ("device", "threads", "compile", "log_interval", "eval_interval", "eval_blocks", "checkpoint_interval", "peak_flops")
TRAJECTORY_CODE = ("model/train.py", "model/optim.py", "model/gpt.py", "model/llama.py", "pipeline/blocks.py", "pipeline/store.py", "pipeline/arrays.py")


@dataclass
class TrainResult:
    """What `train` returns: the trained model (every rank holds the same weights) and the summary metrics."""

    model: torch.nn.Module
    summary: dict


@dataclass
class Position:
    """Where the trainer is: optimizer steps done, and the next block in the data stream."""

    step: int = 0
    epoch: int = 0
    index: int = 0


class BlockOrder:
    """A seeded permutation of block rows per epoch; `take` walks the endless stream of epochs."""

    def __init__(self, n_blocks: int, seed: int):
        self.n_blocks = n_blocks
        self.seed = seed
        self._epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)
            self._epoch = epoch
        return self._perm

    def take(self, pos: Position, count: int) -> np.ndarray:
        """The next `count` rows of the stream; advances `pos`."""
        out = []
        while count:
            perm = self.permutation(pos.epoch)
            chunk = perm[pos.index : pos.index + count]
            out.append(chunk)
            count -= len(chunk)
            pos.index += len(chunk)
            if pos.index == self.n_blocks:
                pos.epoch, pos.index = pos.epoch + 1, 0
        return np.concatenate(out)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The pretraining schedule: warmup, then cosine decay that ends at `max_iters`."""
    return warmup_cosine(step, cfg.warmup_iters, cfg.max_iters, cfg.lr, cfg.min_lr)


@dataclass
class TrainData:
    """The train blocks, every source's val blocks, and the hashes of their manifests."""

    blocks: Blocks
    val: dict[str, Blocks]
    hashes: dict[str, str]

    @property
    def manifest(self) -> dict:
        return self.blocks.manifest


def load_data(train_dir: Path, val_dir: Path, vocab_dir: Optional[Path]) -> TrainData:
    """Open train and val blocks; they must share tokenizer, vocabulary and context, and fit `vocab_dir`."""
    blocks, val = load_blocks(train_dir), load_val_sets(val_dir)
    m = blocks.manifest
    if len(blocks) == 0:
        raise PipelineError(f"{train_dir}: no train blocks")
    for name, val_blocks in val.items():
        check_compatible(val_blocks.manifest, val_dir / name, int(m["vocab_size"]), int(m["context_length"]),
                         tokenizer_name(m), f"the train data {train_dir}")
    if vocab_dir is not None:
        from pipeline.tokenizer import tokenizer_info

        size = tokenizer_info(vocab_dir)["vocab_size"]
        if size != int(m["vocab_size"]):
            raise PipelineError(f"{vocab_dir}: tokenizer has {size} tokens, {train_dir} was packed with {m['vocab_size']}")
    hashes = manifest_hashes({"train": train_dir, **{f"val/{n}": val_dir / n for n in val}})
    return TrainData(blocks=blocks, val=val, hashes=hashes)


def build_model(seed: int, model_cfg: ModelConfig, cfg: TrainConfig, manifest: dict, train_dir: Path):
    """A fresh model shaped by `model` params and the data, or `init_from`; checked against the data."""
    from model.gpt import GPT, GPTConfig, load_any
    from model.llama import Llama, LlamaConfig

    torch.manual_seed(seed)
    if cfg.init_from is None:
        model_class, config_class = (Llama, LlamaConfig) if model_cfg.arch == "llama" else (GPT, GPTConfig)
        model = model_class(config_class.from_params(model_cfg, int(manifest["vocab_size"]), int(manifest["context_length"])))
        label, tokenizer = "the model", None
    else:
        source = Path(cfg.init_from)
        if not source.is_dir():
            raise PipelineError(f"train.init_from: {source} is not a folder")
        model = load_any(source, dropout=model_cfg.dropout)
        tokenizer = folder_tokenizer(source)
        label = f"train.init_from {source}"
    check_compatible(manifest, train_dir, model.config.vocab_size, model.config.block_size, tokenizer, label)
    return model


def run_fingerprint(seed: int, model_cfg: ModelConfig, cfg: TrainConfig, data_hashes: dict[str, str], world: int) -> str:
    """What a checkpoint must share with this run to be resumed (see `model.checkpoint.fingerprint`)."""
    train = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in OPERATIONAL_KEYS}
    root = Path(__file__).resolve().parent.parent
    parts = {"seed": seed, "model": dataclasses.asdict(model_cfg), "train": train, "data": data_hashes, "world": world}
    return fingerprint(parts, [root / f for f in TRAJECTORY_CODE], cfg.init_from)


class Throughput:
    """Tokens/s over the steps of a logging window (evaluation and checkpoint time left out), and MFU."""

    def __init__(self, tokens_per_step: int, flops_per_token: int, peak: Optional[float]):
        self.tokens_per_step, self.flops_per_token, self.peak = tokens_per_step, flops_per_token, peak
        self.window_steps, self.window_time, self.last = 0, 0.0, None
        self.tokens_per_s, self.total_steps, self.total_time = 0.0, 0, 0.0

    def tick(self) -> None:
        """A step ended (the first one of a run is not timed: it pays for warm-up)."""
        now = time.perf_counter()
        if self.last is not None:
            self.window_time += now - self.last
            self.window_steps += 1
        self.last = now
        if self.window_time > 0:
            self.tokens_per_s = self.tokens_per_step * self.window_steps / self.window_time

    def pause_ended(self) -> None:
        """Time spent since the last step (evaluation, checkpoint) does not count."""
        self.last = time.perf_counter()

    def new_window(self) -> None:
        self.total_steps += self.window_steps
        self.total_time += self.window_time
        self.window_steps, self.window_time = 0, 0.0

    @property
    def mfu(self) -> Optional[float]:
        return self.flops_per_token * self.tokens_per_s / self.peak if self.peak and self.tokens_per_s else None

    def timing(self, world: int) -> dict:
        rate = self.tokens_per_step * self.total_steps / self.total_time if self.total_time else 0.0
        mfu = self.flops_per_token * rate / self.peak if self.peak and rate else None
        return {"tokens_per_s": rate * world, "mfu": mfu, "timed_steps": self.total_steps, "step_seconds": self.total_time}


@dataclass
class Run:
    """One training run in progress: what the loop needs, and the loop's steps as methods."""

    d: Dist
    device: torch.device
    seed: int
    cfg: TrainConfig
    data: TrainData
    model: torch.nn.Module  # the model itself (the runner may wrap it: compile, DDP)
    optimizer: torch.optim.Optimizer
    tracker: Tracker
    checkpoint_dir: Path
    fingerprint: str
    print_fn: Callable
    pos: Position = dataclasses.field(default_factory=Position)
    runner: Optional[torch.nn.Module] = None  # what steps call: compiled and/or DDP-wrapped
    eval_model: Optional[torch.nn.Module] = None  # what evaluation calls: compiled, never DDP-wrapped
    order: Optional[BlockOrder] = None
    meter: Optional[Throughput] = None
    window_loss: list = dataclasses.field(default_factory=list)  # step losses since the last log

    def resume(self) -> None:
        """Continue from the latest checkpoint of this fingerprint, if there is one."""
        found = load_checkpoint(self.checkpoint_dir, self.print_fn, self.fingerprint)
        if found is None:
            return
        path, state = found
        self.model.load_state_dict(type(self.model).load(path, map_location=self.device).state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        rngs = state["rng"]
        set_rng_state(rngs[self.d.rank] if self.d.rank < len(rngs) else rngs[0], self.device)
        self.pos = Position(**state["position"])
        self.tracker.restore(state.get("history"))
        self.print_fn(f"train: resuming from {path} (step {self.pos.step})")

    def prepare_runner(self) -> None:
        """Compile and wrap for DDP as configured; set up the throughput meter."""
        runner = torch.compile(self.model) if self.cfg.compile else self.model
        self.eval_model = runner
        if self.d.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            runner = DDP(runner, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.runner = runner
        self.order = BlockOrder(len(self.data.blocks), self.seed)
        context = self.data.blocks.context_length
        peak = peak_flops(self.cfg.peak_flops, self.device) if self.d.main else None
        self.meter = Throughput(self.cfg.batch_size * context * self.cfg.grad_accum, self.model.flops_per_token(context), peak)

    def micro_batches(self) -> list[dict[str, torch.Tensor]]:
        """This rank's slice of the next `grad_accum` micro-batches, on the device."""
        out = []
        b, d = self.cfg.batch_size, self.d
        for _ in range(self.cfg.grad_accum):
            rows = self.order.take(self.pos, d.world * b)[d.rank * b : (d.rank + 1) * b]
            batch = {k: torch.from_numpy(v) for k, v in self.data.blocks.batch(rows).items()}
            if not self.model.config.doc_mask:
                batch.pop("segment_ids")
            if self.device.type == "cuda":
                batch = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}
            out.append(batch)
        return out

    def step(self) -> float:
        """One optimizer step; returns its loss."""
        autocast = autocast_for(self.device)
        loss, _ = optimizer_step(self.runner, self.optimizer, self.micro_batches(), lr_at(self.pos.step, self.cfg),
                                 self.cfg.grad_clip, autocast, self.d, "train", self.pos.step)
        self.pos.step += 1
        self.meter.tick()
        self.window_loss.append(loss)
        return loss

    def due(self, interval: int) -> bool:
        return (interval > 0 and self.pos.step % interval == 0) or self.pos.step == self.cfg.max_iters

    def log(self) -> None:
        """The mean train loss of the steps since the last log, with the LR and the throughput."""
        lr = lr_at(self.pos.step - 1, self.cfg)
        self.tracker.log_train(self.pos.step, sum(self.window_loss) / len(self.window_loss), lr,
                               self.meter.tokens_per_s * self.d.world, self.meter.mfu)
        self.window_loss = []
        self.meter.new_window()

    def evaluate(self) -> None:
        """Loss on `eval_blocks` blocks spread over every val set (ranks split the rows)."""
        sums = torch.zeros(max(1, len(self.data.val)), 2, dtype=torch.float64, device=self.device)
        doc_mask = bool(self.model.config.doc_mask)
        for i, (name, blocks) in enumerate(self.data.val.items()):
            rows = spread_rows(len(blocks), self.cfg.eval_blocks)[self.d.rank :: self.d.world]
            sums[i, 0], sums[i, 1], _ = score_blocks(self.eval_model, blocks, rows, self.cfg.batch_size, self.device, doc_mask)
        totals = all_reduce_sum(sums, self.d).cpu().tolist()
        per_source = {name: (s / c if c else float("nan")) for name, (s, c) in zip(self.data.val, totals)}
        total, count = sum(s for s, _ in totals), sum(c for _, c in totals)
        overall = total / count if count else float("nan")
        self.tracker.log_val(self.pos.step, overall, per_source)
        shown = ", ".join(f"{n} {v:.4f}" for n, v in per_source.items())
        self.print_fn(f"step {self.pos.step}: val loss {overall:.4f} ({shown})")
        self.meter.pause_ended()

    def checkpoint(self) -> None:
        """Save everything a resume needs (rank 0 writes; every rank sends its RNG state)."""
        rngs = gather(rng_state(self.device), self.d)
        if self.d.main:
            state = {
                "format": STATE_FORMAT, "fingerprint": self.fingerprint, "step": self.pos.step,
                "position": dataclasses.asdict(self.pos), "optimizer": self.optimizer.state_dict(), "rng": rngs,
                "history": self.tracker.state(),
            }
            save_checkpoint(self.checkpoint_dir, self.model, state, self.data.manifest)
        self.meter.pause_ended()

    def summary(self) -> dict:
        """Final values (computed, not measured: the same for identical runs)."""
        summary: dict = {"step": self.pos.step, "params": self.model.num_params(),
                         "tokens_seen": self.pos.step * self.meter.tokens_per_step * self.d.world}
        if self.tracker.train_rows:
            _, summary["train_loss"], summary["lr"] = self.tracker.train_rows[-1]
        if self.tracker.val_rows:
            _, overall, per_source = self.tracker.val_rows[-1]
            summary["val_loss"] = _finite(overall)
            summary.update({f"val_loss_{name}": _finite(v) for name, v in per_source.items()})
        return summary


def train(
    seed: int,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    *,
    train_dir: str | Path,
    val_dir: str | Path,
    out_dir: str | Path,
    checkpoint_dir: str | Path,
    vocab_dir: str | Path | None = None,
    tracker: Optional[Tracker] = None,
) -> TrainResult:
    """Train (or resume) and write the final model to `out_dir`; return it with the summary metrics.

    Joins a torchrun job when its environment is set; only rank 0 writes files.
    """
    tracker = tracker or Tracker(None)
    d, device = init_distributed(cfg.device)
    try:
        paths = {k: Path(v) if v is not None else None for k, v in dict(
            train_dir=train_dir, val_dir=val_dir, out_dir=out_dir, checkpoint_dir=checkpoint_dir, vocab_dir=vocab_dir).items()}
        return _train(d, device, seed, model_cfg, cfg, tracker, **paths)
    except BaseException:
        tracker.abort()
        raise
    finally:
        shutdown(d)


def _train(d, device, seed, model_cfg, cfg, tracker, *, train_dir, val_dir, out_dir, checkpoint_dir, vocab_dir) -> TrainResult:
    from tqdm import tqdm

    if not d.main:
        tracker = Tracker(None)
    set_threads(cfg.threads, d)
    prepare(device)
    data = load_data(train_dir, val_dir, vocab_dir)
    model = build_model(seed, model_cfg, cfg, data.manifest, train_dir).to(device)
    optimizer = adamw(model, cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), device)
    torch.manual_seed(seed + d.rank)  # dropout
    run = Run(d, device, seed, cfg, data, model, optimizer, tracker, checkpoint_dir,
              run_fingerprint(seed, model_cfg, cfg, data.hashes, d.world), tqdm.write if d.main else (lambda *_: None))
    run.resume()
    tracker.start(run.fingerprint)
    run.prepare_runner()
    if d.main:
        run.print_fn(f"train: {model.num_params() / 1e6:.2f}M params, {len(data.blocks)} blocks of {data.blocks.context_length} "
                     f"tokens, {d.world} x {cfg.batch_size} x {cfg.grad_accum} blocks/step on {device}")
    with tqdm(total=cfg.max_iters, initial=run.pos.step, desc="train", disable=not d.main, dynamic_ncols=True) as bar:
        model.train()
        while run.pos.step < cfg.max_iters:
            loss = run.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{run.meter.tokens_per_s * d.world:.0f}",
                            mfu=f"{run.meter.mfu:.1%}" if run.meter.mfu is not None else "-", refresh=False)
            if run.due(cfg.log_interval):
                run.log()
            if run.due(cfg.eval_interval):
                run.evaluate()
            if run.due(cfg.checkpoint_interval):
                run.checkpoint()
    if d.main:
        with atomic_dir(out_dir) as tmp:
            model.save_files(tmp, vocab_dir)
            write_json(tmp / TRAIN_MANIFEST_FILE, data.manifest)
    summary = run.summary()
    tracker.finish(summary, run.meter.timing(d.world))
    return TrainResult(model=model, summary=summary)


def _finite(value: float) -> Optional[float]:
    return value if value is not None and math.isfinite(value) else None


@cli
def main() -> None:
    params = load_params()
    folders = {"train": TRAIN_BLOCKS}
    if VAL_BLOCKS.is_dir():
        folders.update({f"val/{p.name}": p for p in sorted(VAL_BLOCKS.iterdir()) if (p / MANIFEST_FILE).is_file()})
    hashes = manifest_hashes(folders) if (TRAIN_BLOCKS / MANIFEST_FILE).is_file() else {}
    tracker = Tracker(
        METRICS_DIR / "train",
        timing_file=METRICS_DIR / "train_timing.json",
        wandb_mode=params.wandb.mode,
        project=params.wandb.project,
        wandb_dir=WANDB_DIR,
        config=run_config(params, hashes),
        group=f"data-{hashes['train'][:12]}" if "train" in hashes else None,
        tags=mixture_tags(params.mix.weights),
    )
    summary = train(
        params.seed, params.model, params.train, train_dir=TRAIN_BLOCKS, val_dir=VAL_BLOCKS, out_dir=MODEL_DIR,
        checkpoint_dir=CHECKPOINT_DIR, vocab_dir=VOCAB_DIR, tracker=tracker,
    ).summary
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"train: done at step {summary['step']}, val loss {summary.get('val_loss')} -> {MODEL_DIR}")


if __name__ == "__main__":
    main()
