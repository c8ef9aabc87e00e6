"""The `train` stage: pretraining on the packed blocks, resumable, single process, DDP or FSDP2.

`python -m model.train` (or `torchrun --nproc_per_node N -m model.train`) reads
`data/packed/train/` and `data/packed/val/<source>/` (indices over the memory-mapped token
stores) and writes
- `data/model/`: the final model (`model.safetensors`, `model_config.json`), a copy of
  `data/vocab` as `tokenizer/`, and the train data's manifest as `train_manifest.json`;
- `data/checkpoints/step-NNNNNNNN/`: the latest checkpoint (`model.checkpoint`; sharded under FSDP,
  `model.shard`). A new run with the same fingerprint (params that change the math, the global
  batch, data manifests, code) resumes from it and ends with the same weights, bit for bit on CPU,
  as an uninterrupted run; the number of processes may change if the global batch stays and there
  is no dropout (then the sums run in another order: within ~1e-5, see docs/gpu.md for the limits);
- the metrics of `model.metrics`: DVCLive in `metrics/train/`, the timing file, a W&B run.

Data order and prefetching: `model.stream`. The optimizer (AdamW, or Muon + AdamW): `model.optim`.
Nothing inside a step waits for the GPU: loss and gradient norm stay on the device and are read
back every `log_interval` steps, where a non-finite value stops the run naming the steps.

MFU = flops_per_token * tokens/s per device / peak FLOP/s per device (`model.runtime.peak_flops`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from model.checkpoint import STATE_FORMAT, fingerprint, latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from model.config import ModelConfig, TrainConfig
from model.folders import TRAIN_MANIFEST_FILE, read_ours, write_ours
from model.layers import resolve_doc_mask_kernel
from model.metrics import Tracker, manifest_hashes, mixture_tags, run_config
from model.optim import Optimizers, adamw, check_finite, muon, optimizer_step, warmup_cosine
from model.runtime import (
    Dist, all_reduce_sum, autocast_for, gather, init_distributed, peak_flops, prepare, set_threads, shutdown, uses_bf16,
)
from model.scoring import block_losses, check_compatible, folder_tokenizer, load_val_sets, spread_rows, tokenizer_name
from model.shard import SHARDS_DIR, gathered, load_sharded, on_rank0, save_sharded, shard
from model.stream import BlockOrder, Position, Prefetcher
from pipeline.blocks import Blocks, load_blocks
from pipeline.commands import stage_arguments
from pipeline.config import load_params
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_dir, write_json
from pipeline.paths import (
    CHECKPOINT_DIR, MANIFEST_FILE, METRICS_DIR, MODEL_DIR, TRAIN_BLOCKS, VAL_BLOCKS, VOCAB_DIR, WANDB_DIR,
)

# train.* keys that do not change the trajectory: a checkpoint stays resumable when only these change
OPERATIONAL_KEYS = ("device", "threads", "compile", "doc_mask_kernel", "log_interval", "eval_interval", "eval_blocks",
                    "checkpoint_interval", "peak_flops")
TRAJECTORY_CODE = ("model/train.py", "model/optim.py", "model/stream.py", "model/shard.py", "model/folders.py", "model/decoder.py",
                   "model/gpt.py", "model/llama.py", "model/layers.py",
                   "pipeline/blocks.py", "pipeline/store.py", "pipeline/arrays.py")


@dataclass
class TrainResult:
    """What `train` returns: the trained model (every rank holds the same weights; under FSDP only
    rank 0 holds it, gathered, and the other ranks None) and the summary metrics."""

    model: Optional[torch.nn.Module]
    summary: dict


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The pretraining schedule (AdamW's LR; Muon's follows it by the same factor): warmup, then
    cosine decay that ends at `max_iters`."""
    return warmup_cosine(step, cfg.warmup_iters, cfg.max_iters, cfg.lr, cfg.min_lr)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> Optimizers:
    """`train.optimizer`: AdamW for everything, or Muon for the hidden matrices and AdamW for the rest."""
    if cfg.optimizer == "muon":
        return muon(model, cfg, device)
    return adamw(model, cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), device)


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
    from model.folders import load_any, refuse_untracked_base
    from model.gpt import GPT, GPTConfig
    from model.llama import Llama, LlamaConfig

    torch.manual_seed(seed)
    if cfg.start_folder is None:
        model_class, config_class = (Llama, LlamaConfig) if model_cfg.arch == "llama" else (GPT, GPTConfig)
        model = model_class(config_class.from_params(model_cfg, int(manifest["vocab_size"]), int(manifest["context_length"])))
        label, tokenizer = "the model", None
    else:
        source = Path(cfg.start_folder)
        if not source.is_dir():
            raise PipelineError(f"train.init_from: {source} is not a folder")
        refuse_untracked_base("train.init_from", source)
        model = load_any(source, dropout=model_cfg.dropout)
        tokenizer = folder_tokenizer(source)
        label = f"train.init_from {source}"
    check_compatible(manifest, train_dir, model.config.vocab_size, model.config.block_size, tokenizer, label)
    return model


def run_fingerprint(seed: int, model_cfg: ModelConfig, cfg: TrainConfig, data_hashes: dict[str, str], world: int, sharded: bool) -> str:
    """What a checkpoint must share with this run to be resumed (see `model.checkpoint.fingerprint`):
    the global batch (batch_size x processes: each step reads the same blocks whatever their
    split), and whether it is sharded (another checkpoint format). The number of processes only
    with dropout: each process draws its own dropout masks, from a random state saved per process."""
    train = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in OPERATIONAL_KEYS + ("batch_size", "parallel")}
    root = Path(__file__).resolve().parent.parent
    parts = {"seed": seed, "model": dataclasses.asdict(model_cfg), "train": train, "data": data_hashes,
             "global_batch": cfg.batch_size * world, "sharded": sharded,
             "processes": world if model_cfg.dropout > 0 else None}
    return fingerprint(parts, [root / f for f in TRAJECTORY_CODE], cfg.start_folder)


class Throughput:
    """Tokens/s over the timed steps, and MFU. The clock runs between sync points: it stops for
    evaluation and checkpoints, and starts after the first step of a run, which pays for warm-up
    (and compilation). On CUDA each start and stop waits for the device, so queued work counts."""

    def __init__(self, tokens_per_step: int, flops_per_token: int, peak: Optional[float], device: torch.device):
        self.tokens_per_step, self.flops_per_token, self.peak, self.device = tokens_per_step, flops_per_token, peak, device
        self.since: Optional[float] = None
        self.started = False
        self.window_steps, self.window_time = 0, 0.0
        self.tokens_per_s, self.total_steps, self.total_time = 0.0, 0, 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def tick(self) -> None:
        """A step was queued; the first one of a run starts the clock instead of counting."""
        if self.started:
            self.window_steps += 1
        else:
            self.started = True
            self.start()

    def start(self) -> None:
        self.since = self._now()

    def stop(self) -> None:
        if self.since is not None:
            self.window_time += self._now() - self.since
            self.since = None

    def close_window(self) -> None:
        """End a logging window (the clock keeps running): its rate becomes `tokens_per_s`."""
        running = self.since is not None
        self.stop()
        if self.window_time > 0:
            self.tokens_per_s = self.tokens_per_step * self.window_steps / self.window_time
        self.total_steps += self.window_steps
        self.total_time += self.window_time
        self.window_steps, self.window_time = 0, 0.0
        if running:
            self.start()

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
    model: torch.nn.Module  # the model itself (the runner may wrap it: compile, DDP; sharded under FSDP)
    optimizer: Optimizers
    tracker: Tracker
    checkpoint_dir: Path
    fingerprint: str
    print_fn: Callable
    pos: Position = dataclasses.field(default_factory=Position)
    runner: Optional[torch.nn.Module] = None  # what steps call: compiled and/or DDP-wrapped
    eval_model: Optional[torch.nn.Module] = None  # what evaluation calls: compiled, never DDP-wrapped
    stream: Optional[Prefetcher] = None
    meter: Optional[Throughput] = None
    window: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # on the device: summed step losses, largest grad norm
    window_start: int = 0  # the first step (0-based) of the window
    sharded: bool = False  # FSDP: the model's and optimizer's tensors are shards (model.shard)

    def resume(self) -> None:
        """Continue from the latest checkpoint of this fingerprint, if there is one. A checkpoint in the
        other format (sharded or not) is refused rather than replaced: starting fresh would delete it."""
        latest = latest_checkpoint(self.checkpoint_dir)
        if latest is not None and (latest / SHARDS_DIR).is_dir() != self.sharded:
            how = "without train.parallel: fsdp" if self.sharded else "with train.parallel: fsdp under torchrun"
            raise PipelineError(f"{latest}: a checkpoint saved {how}; run that way to resume it, or delete "
                                f"{self.checkpoint_dir} to start fresh")
        found = load_checkpoint(self.checkpoint_dir, self.print_fn, self.fingerprint)
        if found is None:
            return
        path, state = found
        if self.sharded:
            load_sharded(path, self.model, self.optimizer.optimizers["adamw"])
        else:
            self.model.load_state_dict(read_ours(path, map_location=self.device).state_dict())
            self.optimizer.load_state_dict(state["optimizer"])
        rngs = state["rng"]
        set_rng_state(rngs[self.d.rank % len(rngs)], self.device)  # another number of processes: only without dropout
        self.pos = Position(**state["position"])
        self.window_start = self.pos.step
        self.tracker.restore(state.get("history"))
        self.print_fn(f"train: resuming from {path} (step {self.pos.step})")

    def prepare_runner(self) -> None:
        """Pick the document-mask kernel, compile (static shapes) and wrap for DDP as configured (a
        sharded model is its own runner: its blocks were compiled before sharding); start the batch
        prefetcher and the throughput meter."""
        self.model.doc_mask_kernel = resolve_doc_mask_kernel(self.cfg.doc_mask_kernel, self.device, self.model.config.dropout)
        runner = torch.compile(self.model, dynamic=False) if self.cfg.compile and not self.sharded else self.model
        self.eval_model = runner
        if self.d.launched and not self.sharded:
            from torch.nn.parallel import DistributedDataParallel as DDP

            runner = DDP(runner, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.runner = runner
        order = BlockOrder(len(self.data.blocks), self.seed)
        self.stream = Prefetcher(self.data.blocks, order, self.pos, self.cfg.batch_size, self.cfg.grad_accum, self.d,
                                 segments=bool(self.model.config.doc_mask), pin=self.device.type == "cuda")
        context = self.data.blocks.context_length
        peak = peak_flops(self.cfg.peak_flops, self.device) if self.d.main else None
        self.meter = Throughput(self.cfg.batch_size * context * self.cfg.grad_accum, self.model.flops_per_token(context),
                                peak, self.device)

    def step(self) -> None:
        """One optimizer step, queued on the device without waiting for it."""
        data = self.stream.next()
        batches = [{k: v.to(self.device, non_blocking=True) for k, v in b.items()} for b in data.micro_batches]
        scale = lr_at(self.pos.step, self.cfg) / self.cfg.lr
        loss, grad_norm = optimizer_step(self.runner, self.optimizer, batches, scale, self.pos.step, self.cfg.grad_clip,
                                         autocast_for(self.device, self.cfg.precision))
        self.pos.step, self.pos.epoch, self.pos.index = self.pos.step + 1, data.epoch, data.index
        if self.window is None:
            self.window = (loss, grad_norm)
        else:
            self.window = (self.window[0] + loss, torch.maximum(self.window[1], grad_norm))
        self.meter.tick()

    def due(self, interval: int) -> bool:
        return (interval > 0 and self.pos.step % interval == 0) or self.pos.step == self.cfg.max_iters

    def window_values(self) -> tuple[float, float]:
        """The window's mean loss (over steps and ranks) and largest gradient norm, read back from the
        device; a non-finite one stops the run with a one-line error naming the steps."""
        steps = self.pos.step - self.window_start
        stats = torch.stack([self.window[0] / steps, self.window[1]])
        loss, grad_norm = (all_reduce_sum(stats, self.d) / self.d.world).tolist()
        check_finite(loss, grad_norm, "train", self.window_start + 1, self.pos.step, lr_at(self.pos.step - 1, self.cfg))
        return loss, grad_norm

    def log(self) -> None:
        """The mean train loss of the steps since the last log, with the LR and the throughput."""
        loss, _ = self.window_values()
        self.meter.close_window()
        self.tracker.log_train(self.pos.step, loss, lr_at(self.pos.step - 1, self.cfg),
                               self.meter.tokens_per_s * self.d.world, self.meter.mfu)
        self.window, self.window_start = None, self.pos.step

    def evaluate(self) -> None:
        """Loss on `eval_blocks` blocks spread over every val set (ranks split the rows; a sharded model
        runs collectives in every forward, so there every rank scores every row)."""
        self.meter.stop()
        sums = torch.zeros(max(1, len(self.data.val)), 2, dtype=torch.float64, device=self.device)
        doc_mask = bool(self.model.config.doc_mask)
        for i, (name, blocks) in enumerate(self.data.val.items()):
            rows = spread_rows(len(blocks), self.cfg.eval_blocks)
            rows = rows if self.sharded else rows[self.d.rank :: self.d.world]
            losses, counts, _ = block_losses(self.eval_model, blocks, rows, self.cfg.batch_size, self.device, doc_mask,
                                             precision=self.cfg.precision)
            sums[i, 0], sums[i, 1] = float(losses.sum()), int(counts.sum())
        totals = (sums if self.sharded else all_reduce_sum(sums, self.d)).cpu().tolist()
        per_source = {name: (s / c if c else float("nan")) for name, (s, c) in zip(self.data.val, totals)}
        total, count = sum(s for s, _ in totals), sum(c for _, c in totals)
        overall = total / count if count else float("nan")
        self.tracker.log_val(self.pos.step, overall, per_source)
        shown = ", ".join(f"{n} {v:.4f}" for n, v in per_source.items())
        self.print_fn(f"step {self.pos.step}: val loss {overall:.4f} ({shown})")
        self.meter.start()

    def checkpoint(self) -> None:
        """Save everything a resume needs (rank 0 writes; every rank sends its RNG state); never a
        model whose recent steps were not finite."""
        self.meter.stop()
        if self.window is not None:
            self.window_values()
        rngs = gather(rng_state(self.device), self.d)
        state = {"format": STATE_FORMAT, "fingerprint": self.fingerprint, "step": self.pos.step,
                 "position": dataclasses.asdict(self.pos), "rng": rngs, "history": self.tracker.state()}
        if self.sharded:  # every rank writes its shards of the model and optimizer
            save_sharded(self.checkpoint_dir, self.model, self.optimizer.optimizers["adamw"], state, self.data.manifest, self.d)
        elif self.d.main:
            save_checkpoint(self.checkpoint_dir, self.model, {**state, "optimizer": self.optimizer.state_dict()}, self.data.manifest)
        self.meter.start()

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
    sharded = cfg.parallel == "fsdp" and d.launched
    if sharded:
        full, network, config = on_rank0(lambda: build_model(seed, model_cfg, cfg, data.manifest, train_dir), d)
        model = shard(full, network, config, device, uses_bf16(device, cfg.precision) and device.type == "cuda", cfg.compile)
        del full
    else:
        model = build_model(seed, model_cfg, cfg, data.manifest, train_dir).to(device)
    optimizer = build_optimizer(model, cfg, device)
    torch.manual_seed(seed + d.rank)  # dropout
    run = Run(d, device, seed, cfg, data, model, optimizer, tracker, checkpoint_dir,
              run_fingerprint(seed, model_cfg, cfg, data.hashes, d.world, sharded), tqdm.write if d.main else (lambda *_: None),
              sharded=sharded)
    run.resume()
    tracker.start(run.fingerprint)
    run.prepare_runner()
    if d.main:
        run.print_fn(f"train: {model.num_params() / 1e6:.2f}M params, {len(data.blocks)} blocks of {data.blocks.context_length} "
                     f"tokens, {d.world} x {cfg.batch_size} x {cfg.grad_accum} blocks/step on {device}")
    with tqdm(total=cfg.max_iters, initial=run.pos.step, desc="train", disable=not d.main, dynamic_ncols=True) as bar:
        model.train()
        try:
            while run.pos.step < cfg.max_iters:
                run.step()
                bar.update(1)
                if run.due(cfg.log_interval):
                    run.log()
                    mfu = run.meter.mfu
                    bar.set_postfix(loss=f"{tracker.train_rows[-1][1]:.4f}", tok_s=f"{run.meter.tokens_per_s * d.world:.0f}",
                                    mfu=f"{mfu:.1%}" if mfu is not None else "-", refresh=False)
                if run.due(cfg.eval_interval):
                    run.evaluate()
                if run.due(cfg.checkpoint_interval):
                    run.checkpoint()
        finally:
            run.stream.close()
    whole = gathered(model, d) if sharded else model
    if d.main:
        with atomic_dir(out_dir) as tmp:
            write_ours(whole, tmp, vocab_dir)
            write_json(tmp / TRAIN_MANIFEST_FILE, data.manifest)
    summary = run.summary()
    tracker.finish(summary, run.meter.timing(d.world))
    return TrainResult(model=whole, summary=summary)


def _finite(value: float) -> Optional[float]:
    return value if value is not None and math.isfinite(value) else None


@cli
def main(argv: Optional[Sequence[str]] = None) -> None:
    stage_arguments(__doc__, "model.train", argv)
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
