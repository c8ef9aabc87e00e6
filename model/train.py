"""The `train` stage: GPT-2 pretraining on the packed blocks, resumable, single process or DDP.

`python -m model.train` (or `torchrun --nproc_per_node N -m model.train`) reads
`data/packed/train/` (memory-mapped) and `data/packed/val/<source>/`, and writes
- `data/model/`: the final model (`model.safetensors`, `model_config.json`), a copy of `data/vocab`
  as `tokenizer/`, and the train data's manifest as `train_manifest.json`;
- `data/checkpoints/step-NNNNNNNN/`: the latest checkpoint (model files + `train_state.pt`), written
  to a temporary folder and renamed, so a kill at any point leaves the last good one. A new run with
  the same fingerprint (params that change the math, world size, data manifests, code) resumes from it and
  ends with the same weights, bit for bit on CPU, as an uninterrupted run;
- `metrics/train.json` and `metrics/plots/` (see `model.tracking`), and a W&B run under `data/wandb/`.

Data order: a seeded permutation of all blocks per epoch; the position is (epoch, index into it).
Each optimizer step takes world_size * batch_size * grad_accum blocks from the stream, rank r
the r-th slice of every micro-batch, so ranks read disjoint blocks.

MFU = flops_per_token * tokens/s per device / peak FLOP/s per device. `train.peak_flops`: 0 takes
the bf16 dense peak of known GPUs (H100/H200-class 989e12, A100 312e12) and otherwise measures a
large matmul once at start (fp32 on CPU, so CPU MFU is relative to what matmuls reach there);
a negative value turns MFU off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from model.evaluate import (
    TRAIN_MANIFEST_FILE,
    autocast_for,
    check_compatible,
    load_val_sets,
    resolve_device,
    score_blocks,
    tokenizer_name,
)
from model.tracking import Tracker, manifest_hashes, mixture_tags, run_config
from pipeline.blocks import Blocks, load_blocks
from pipeline.config import ModelConfig, TrainConfig, load_params
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_dir, read_json, sha256_file, write_json
from pipeline.paths import CHECKPOINT_DIR, MANIFEST_FILE, METRICS_DIR, MODEL_DIR, TRAIN_BLOCKS, VAL_BLOCKS, VOCAB_DIR, WANDB_DIR

STATE_FILE = "train_state.pt"
STATE_FORMAT = 1
# train.* keys that do not change the trajectory: a checkpoint stays resumable when only these change
OPERATIONAL_KEYS = ("device", "threads", "compile", "log_interval", "eval_interval", "eval_blocks", "checkpoint_interval", "peak_flops")
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12}


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


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


def warmup_cosine(step: int, warmup_iters: int, decay_end: int, lr: float, min_lr: float) -> float:
    """Linear warmup to `lr` over `warmup_iters` steps, then cosine decay to `min_lr` at step `decay_end`."""
    if step < warmup_iters:
        return lr * (step + 1) / (warmup_iters + 1)
    ratio = min(1.0, (step - warmup_iters) / max(1, decay_end - warmup_iters))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The pretraining schedule: decay ends at `max_iters`."""
    return warmup_cosine(step, cfg.warmup_iters, cfg.max_iters, cfg.lr, cfg.min_lr)


def fingerprint(seed: int, model_cfg: ModelConfig, cfg: TrainConfig, data_hashes: dict[str, str], world: int) -> str:
    """Hash of everything that shapes the trajectory: a checkpoint with another fingerprint is not resumed.

    Params (less OPERATIONAL_KEYS), data manifests, world size, the trainer/model/block code, and the
    files of `init_from` (names, sizes, mtimes).
    """
    import model.gpt
    import pipeline.arrays
    import pipeline.blocks
    import pipeline.store

    train = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in OPERATIONAL_KEYS}
    code = {Path(m.__file__).name: sha256_file(m.__file__) for m in (model.gpt, pipeline.blocks, pipeline.store, pipeline.arrays)}
    code[Path(__file__).name] = sha256_file(__file__)
    init = None
    if cfg.init_from and Path(cfg.init_from).is_dir():
        init = sorted((str(f.relative_to(cfg.init_from)), f.stat().st_size, f.stat().st_mtime_ns)
                      for f in Path(cfg.init_from).rglob("*") if f.is_file())
    blob = {"seed": seed, "model": dataclasses.asdict(model_cfg), "train": train, "data": data_hashes,
            "world": world, "code": code, "init_from": init}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def peak_flops(cfg: TrainConfig, device: torch.device) -> Optional[float]:
    """Per-device peak FLOP/s for MFU (see the module docstring); None when MFU is off."""
    if cfg.peak_flops < 0:
        return None
    if cfg.peak_flops > 0:
        return cfg.peak_flops
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_BF16.items():
            if key in name:
                return value
    return measure_matmul_flops(device)


def measure_matmul_flops(device: torch.device, seconds: float = 0.3) -> float:
    """Best FLOP/s of a square matmul (bf16 on CUDA, fp32 on CPU) over about `seconds` of tries."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        start = time.perf_counter()
        a @ b
        sync()
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join the torchrun job when RANK/WORLD_SIZE are set (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world <= 1:
        return Dist(), device
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return Dist(rank=rank, world=world, local_world=local_world), device


def set_threads(threads: int, d: Dist) -> None:
    """`threads` torch CPU threads, or (0) the cores shared evenly among this node's processes."""
    if threads <= 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // d.local_world)
    torch.set_num_threads(threads)


def build_model(seed: int, model_cfg: ModelConfig, cfg: TrainConfig, manifest: dict, train_dir: Path):
    """A fresh model shaped by `model` params and the data, or `init_from`; checked against the data."""
    from model.gpt import GPT, GPTConfig, load_any

    torch.manual_seed(seed)
    if cfg.init_from is None:
        model = GPT(GPTConfig.from_params(model_cfg, int(manifest["vocab_size"]), int(manifest["context_length"])))
        label, tokenizer = "the model", None
    else:
        source = Path(cfg.init_from)
        if not source.is_dir():
            raise PipelineError(f"train.init_from: {source} is not a folder")
        model = load_any(source, dropout=model_cfg.dropout)
        trained_on = source / TRAIN_MANIFEST_FILE
        tokenizer = tokenizer_name(read_json(trained_on)) if trained_on.is_file() else None
        label = f"train.init_from {source}"
    check_compatible(manifest, train_dir, model.config.vocab_size, model.config.block_size, tokenizer, label)
    return model


def check_data(train: Blocks, train_dir: Path, val: dict[str, Blocks], val_dir: Path, vocab_dir: Optional[Path]) -> None:
    """Train and every val set must share tokenizer, vocab and context length; the vocab folder must match."""
    m = train.manifest
    if len(train) == 0:
        raise PipelineError(f"{train_dir}: no train blocks")
    if int(m["context_length"]) != train.context_length:
        raise PipelineError(f"{train_dir}: manifest context length {m['context_length']} but blocks of {train.context_length}")
    for name, blocks in val.items():
        check_compatible(blocks.manifest, val_dir / name, int(m["vocab_size"]), int(m["context_length"]),
                         tokenizer_name(m), f"the train data {train_dir}")
    if vocab_dir is not None:
        from pipeline.tokenizer import load_tokenizer

        tok = load_tokenizer(vocab_dir)
        if tok.vocab_size != int(m["vocab_size"]):
            raise PipelineError(f"{vocab_dir}: tokenizer has {tok.vocab_size} tokens, {train_dir} was packed with {m['vocab_size']}")


def latest_checkpoint(checkpoint_dir: Path) -> Optional[Path]:
    """The highest complete `step-N` folder, if any."""
    if not checkpoint_dir.is_dir():
        return None
    found = [p for p in checkpoint_dir.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[1]), default=None)


def load_checkpoint(checkpoint_dir: Path, print_fn=print, expected: Optional[str] = None) -> Optional[tuple[Path, dict]]:
    """The latest checkpoint and its train state, or None when absent or from other params/data."""
    path = latest_checkpoint(checkpoint_dir)
    if path is None:
        return None
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    if state.get("format") != STATE_FORMAT or (expected is not None and state.get("fingerprint") != expected):
        print_fn(f"train: ignoring {path} (made with other params or data); starting fresh")
        return None
    return path, state


def save_checkpoint(checkpoint_dir: Path, model, state: dict, manifest: dict) -> Path:
    """Write `step-N/` beside the old one via a temp folder + rename, then drop the older ones."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / f"step-{state['step']:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=checkpoint_dir))
    try:
        model.save_files(tmp)
        torch.save(state, tmp / STATE_FILE)
        write_json(tmp / TRAIN_MANIFEST_FILE, manifest)
        for f in tmp.iterdir():
            _fsync(f)
        if final.exists():
            os.replace(final, checkpoint_dir / f".trash-{final.name}-{os.getpid()}")
        os.replace(tmp, final)
        _fsync(checkpoint_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for other in list(checkpoint_dir.iterdir()):
        if other != final:
            trash = other if other.name.startswith(".trash-") else checkpoint_dir / f".trash-{other.name}-{os.getpid()}"
            if trash != other:
                os.replace(other, trash)
            shutil.rmtree(trash, ignore_errors=True) if trash.is_dir() else trash.unlink(missing_ok=True)
    return final


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def gather(obj, d: Dist) -> list:
    """`obj` from every rank, in rank order (just `[obj]` without DDP)."""
    if d.world == 1:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def evaluate_val(model, val: dict[str, Blocks], eval_blocks: int, batch_size: int, device, d: Dist) -> tuple[float, dict]:
    """Mean loss over the first `eval_blocks` blocks of each val set (ranks split the rows): overall, per source."""
    sums = torch.zeros(max(1, len(val)), 2, dtype=torch.float64, device=device)
    doc_mask = bool(model.config.doc_mask)
    for i, (name, blocks) in enumerate(val.items()):
        n = len(blocks) if eval_blocks <= 0 else min(eval_blocks, len(blocks))
        s, c, _ = score_blocks(model, blocks, np.arange(n)[d.rank :: d.world], batch_size, device, doc_mask)
        sums[i, 0], sums[i, 1] = s, c
    if d.world > 1:
        dist.all_reduce(sums)
    sums = sums.cpu().tolist()
    per_source = {name: (s / c if c else float("nan")) for name, (s, c) in zip(val, sums)}
    total, count = sum(s for s, _ in sums), sum(c for _, c in sums)
    return (total / count if count else float("nan")), per_source


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
    train_dir, val_dir, out_dir, checkpoint_dir = map(Path, (train_dir, val_dir, out_dir, checkpoint_dir))
    vocab_dir = Path(vocab_dir) if vocab_dir is not None else None
    if cfg.batch_size < 1 or cfg.grad_accum < 1 or cfg.max_iters < 0:
        raise PipelineError("train.batch_size and train.grad_accum must be >= 1, train.max_iters >= 0")
    tracker = tracker or Tracker(None)
    d, device = init_distributed(cfg.device)
    try:
        return _train(d, device, seed, model_cfg, cfg, train_dir, val_dir, out_dir, checkpoint_dir, vocab_dir, tracker)
    except BaseException:
        tracker.abort()
        raise
    finally:
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(d, device, seed, model_cfg, cfg, train_dir, val_dir, out_dir, checkpoint_dir, vocab_dir, tracker) -> TrainResult:
    from tqdm import tqdm

    tracker.active = tracker.active and d.main
    set_threads(cfg.threads, d)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")

    blocks = load_blocks(train_dir)
    val = load_val_sets(val_dir)
    check_data(blocks, train_dir, val, val_dir, vocab_dir)
    manifest = blocks.manifest
    hashes = manifest_hashes({"train": train_dir, **{f"val/{n}": val_dir / n for n in val}})
    print_fn = tqdm.write if d.main else (lambda *_: None)

    raw = build_model(seed, model_cfg, cfg, manifest, train_dir).to(device)
    optimizer = raw.configure_optimizer(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), device.type)
    torch.manual_seed(seed + d.rank)
    pos = Position()
    fp = fingerprint(seed, model_cfg, cfg, hashes, d.world)
    found = load_checkpoint(checkpoint_dir, print_fn, fp)
    if found is not None:
        path, state = found
        from model.gpt import GPT

        raw.load_state_dict(GPT.load(path, map_location=device).state_dict())
        optimizer.load_state_dict(state["optimizer"])
        rngs = state["rng"]
        set_rng_state(rngs[d.rank] if d.rank < len(rngs) else rngs[0], device)
        pos = Position(**state["position"])
        tracker.restore(state.get("tracker"))
        print_fn(f"train: resuming from {path} (step {pos.step})")
    tracker.start()

    runner = torch.compile(raw) if cfg.compile else raw
    eval_model = runner
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        runner = DDP(runner, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = autocast_for(device)
    order = BlockOrder(len(blocks), seed)
    T = blocks.context_length
    tokens_per_step = cfg.batch_size * T * cfg.grad_accum  # per rank
    flops_per_token = raw.flops_per_token(T)
    peak = peak_flops(cfg, device) if d.main else None
    params_count = raw.num_params()
    if d.main:
        print_fn(
            f"train: {params_count / 1e6:.2f}M params, {len(blocks)} blocks of {T} tokens, "
            f"{d.world} x {cfg.batch_size} x {cfg.grad_accum} blocks/step on {device}"
        )

    def checkpoint() -> None:
        rngs = gather(rng_state(device), d)
        if d.main:
            state = {
                "format": STATE_FORMAT,
                "fingerprint": fp,
                "step": pos.step,
                "position": dataclasses.asdict(pos),
                "optimizer": optimizer.state_dict(),
                "rng": rngs,
                "schedule": {"lr": lr_at(max(0, pos.step - 1), cfg), "warmup_iters": cfg.warmup_iters,
                             "max_iters": cfg.max_iters, "max_lr": cfg.lr, "min_lr": cfg.min_lr},
                "tracker": tracker.state(),
            }
            save_checkpoint(checkpoint_dir, raw, state, manifest)
            tracker.write_files()

    def run_eval() -> None:
        overall, per_source = evaluate_val(eval_model, val, cfg.eval_blocks, cfg.batch_size, device, d)
        tracker.log_val(pos.step, overall, per_source)
        shown = ", ".join(f"{n} {v:.4f}" for n, v in per_source.items())
        print_fn(f"step {pos.step}: val loss {overall:.4f} ({shown})")

    with tqdm(total=cfg.max_iters, initial=pos.step, desc="train", disable=not d.main, dynamic_ncols=True) as bar:
        window_loss, window_n, window_steps, window_time = 0.0, 0, 0, 0.0
        tokens_per_s, mfu = 0.0, None
        last = time.perf_counter()
        first = True
        raw.train()
        while pos.step < cfg.max_iters:
            lr = lr_at(pos.step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                rows = order.take(pos, d.world * cfg.batch_size)[d.rank * cfg.batch_size : (d.rank + 1) * cfg.batch_size]
                batch = {k: torch.from_numpy(v) for k, v in blocks.batch(rows).items()}
                if device.type == "cuda":
                    batch = {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
                sync = runner.no_sync() if d.world > 1 and micro < cfg.grad_accum - 1 else contextlib.nullcontext()
                with sync:
                    with autocast():
                        _, loss = runner(
                            batch["inputs"],
                            targets=batch["targets"],
                            loss_mask=batch["loss_mask"],
                            segment_ids=batch["segment_ids"] if raw.config.doc_mask else None,
                        )
                    (loss / cfg.grad_accum).backward()
                loss_sum += loss.detach().float()
            stats = torch.stack([loss_sum / cfg.grad_accum, torch.zeros((), device=device)])
            if cfg.grad_clip > 0:
                stats[1] = torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip)
            if d.world > 1:
                dist.all_reduce(stats)
                stats /= d.world
            step_loss, grad_norm = stats.tolist()
            if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
                what = "loss" if not math.isfinite(step_loss) else "gradient norm"
                raise PipelineError(
                    f"train: {what} is {step_loss if what == 'loss' else grad_norm} at step {pos.step + 1} "
                    f"(lr {lr:.3g}); lower train.lr or check the data"
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            pos.step += 1

            now = time.perf_counter()
            if not first:
                window_time += now - last
                window_steps += 1
            first, last = False, now
            window_loss, window_n = window_loss + step_loss, window_n + 1
            tokens_per_s = tokens_per_step * window_steps / window_time if window_time > 0 else 0.0
            mfu = flops_per_token * tokens_per_s / peak if peak and tokens_per_s else None
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tokens_per_s * d.world:.0f}",
                            mfu=f"{mfu:.1%}" if mfu is not None else "-", refresh=False)
            at_end = pos.step == cfg.max_iters
            if pos.step % max(1, cfg.log_interval) == 0 or at_end:
                tracker.log_train(pos.step, window_loss / window_n, lr, tokens_per_s * d.world, mfu)
                window_loss, window_n, window_steps, window_time = 0.0, 0, 0, 0.0
            if (cfg.eval_interval > 0 and pos.step % cfg.eval_interval == 0) or at_end:
                run_eval()
                last = time.perf_counter()
            if (cfg.checkpoint_interval > 0 and pos.step % cfg.checkpoint_interval == 0) or at_end:
                checkpoint()
                last = time.perf_counter()

    if d.main:
        with atomic_dir(out_dir) as tmp:
            raw.save_files(tmp, vocab_dir)
            write_json(tmp / TRAIN_MANIFEST_FILE, manifest)
    summary = summarize(tracker, pos.step, params_count, tokens_per_step * d.world)
    tracker.finish(summary)
    return TrainResult(model=raw, summary=summary)


def summarize(tracker: Tracker, step: int, params_count: int, tokens_per_step: int) -> dict:
    """Final values for `metrics/train.json`: last train point, last val losses, throughput."""
    summary: dict = {"step": step, "params": params_count, "tokens_seen": step * tokens_per_step}
    if tracker.train_rows:
        _, loss, lr, tokens_per_s, mfu = tracker.train_rows[-1]
        summary.update(train_loss=loss, lr=lr, tokens_per_s=tokens_per_s, mfu=mfu)
    if tracker.val_rows:
        _, overall, per_source = tracker.val_rows[-1]
        summary["val_loss"] = _finite(overall)
        summary.update({f"val_loss_{name}": _finite(v) for name, v in per_source.items()})
    return summary


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
        METRICS_DIR,
        wandb_mode=params.wandb.mode,
        project=params.wandb.project,
        wandb_dir=WANDB_DIR,
        config=run_config(params, hashes),
        group=f"data-{hashes['train'][:12]}" if "train" in hashes else None,
        tags=mixture_tags(params.mix.weights),
    )
    summary = train(
        params.seed,
        params.model,
        params.train,
        train_dir=TRAIN_BLOCKS,
        val_dir=VAL_BLOCKS,
        out_dir=MODEL_DIR,
        checkpoint_dir=CHECKPOINT_DIR,
        vocab_dir=VOCAB_DIR,
        tracker=tracker,
    ).summary
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"train: done at step {summary['step']}, val loss {summary.get('val_loss')} -> {MODEL_DIR}")


if __name__ == "__main__":
    main()
