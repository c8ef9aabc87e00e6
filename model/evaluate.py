"""The `evaluate` stage: loss and perplexity of the trained model on every source's validation blocks.

`python -m model.evaluate` reads `data/model/` and `data/packed/val/<source>/` and writes the flat
DVC metric `metrics/eval.json`: `loss`, `perplexity`, `tokens`, `bpb` over all sources
(token-weighted), and `loss_<source>`, `perplexity_<source>`, `tokens_<source>`, `bpb_<source>`
for each. `bpb` is bits per UTF-8 byte of the scored text: the summed loss in bits over the bytes
the target tokens stand for (EOS stands for none), so models with different tokenizers compare on
one scale. A source without validation blocks reports `tokens_<source>: 0` and null
loss/perplexity/bpb. `unigram_loss[_<source>]` is the baseline a model without context gets on the
same targets (from `data/packed/train`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from model.runtime import resolve_device
from model.scoring import check_compatible, folder_tokenizer, load_val_sets, score_blocks, spread_rows
from pipeline.blocks import Blocks, load_blocks
from pipeline.config import EvaluateConfig, load_params
from pipeline.errors import PipelineError, cli
from pipeline.io import write_json
from pipeline.paths import METRICS_DIR, MODEL_DIR, TRAIN_BLOCKS, VAL_BLOCKS

METRICS_FILE = METRICS_DIR / "eval.json"


def score_sources(
    model: torch.nn.Module, val: dict[str, Blocks], max_blocks: int, batch_size: int, device: torch.device,
    token_bytes: np.ndarray,
) -> dict:
    """Flat metrics: loss/perplexity/tokens/bpb overall (token-weighted) and per source, on the first
    `max_blocks` blocks spread over each val set (0: all)."""
    doc_mask = bool(getattr(model.config, "doc_mask", False))
    metrics: dict = {}
    total, count, nbytes = 0.0, 0, 0
    for name, blocks in val.items():
        rows = spread_rows(len(blocks), max_blocks)
        s, c, b = score_blocks(model, blocks, rows, batch_size, device, doc_mask, token_bytes)
        metrics.update(_loss_metrics(s, c, b, f"_{name}"))
        total, count, nbytes = total + s, count + c, nbytes + b
    metrics.update(_loss_metrics(total, count, nbytes, ""))
    return dict(sorted(metrics.items()))


def unigram_baseline(train: Blocks, val: dict[str, Blocks], max_blocks: int, vocab_size: int) -> dict:
    """Loss of the best context-free model: train target-token frequencies (add-one smoothed), scored
    on the same val targets as the model. A trained model should sit well below it."""
    counts = np.ones(vocab_size, dtype=np.float64)
    for start in range(0, len(train), 4096):
        rows = train.batch(np.arange(start, min(start + 4096, len(train))))
        counts += np.bincount(rows["targets"][rows["loss_mask"]], minlength=vocab_size)[:vocab_size]
    log_probs = np.log(counts / counts.sum())
    metrics, total, count = {}, 0.0, 0
    for name, blocks in val.items():
        rows = blocks.batch(spread_rows(len(blocks), max_blocks))
        targets = rows["targets"][rows["loss_mask"]]
        if len(targets):
            metrics[f"unigram_loss_{name}"] = float(-log_probs[targets].mean())
        total, count = total - float(log_probs[targets].sum()), count + len(targets)
    metrics["unigram_loss"] = total / count if count else None
    return metrics


def _loss_metrics(total: float, count: int, nbytes: int, suffix: str) -> dict:
    loss = total / count if count else None
    return {
        f"loss{suffix}": loss,
        f"perplexity{suffix}": math.exp(min(loss, 700.0)) if loss is not None else None,
        f"tokens{suffix}": count,
        f"bpb{suffix}": total / math.log(2) / nbytes if nbytes else None,
    }


def evaluate(model_dir: str | Path, val_dir: str | Path, cfg: EvaluateConfig, train_dir: str | Path | None = None) -> dict:
    """Score the model saved in `model_dir` on every source under `val_dir`; return the flat metrics.

    With `train_dir`, also the unigram baseline of that train data (`unigram_loss[_<source>]`)."""
    from model.gpt import TOKENIZER_DIR, load_any
    from pipeline.tokenizer import load_tokenizer

    device = resolve_device(cfg.device)
    model_dir = Path(model_dir)
    if not (model_dir / "model_config.json").is_file():
        raise PipelineError(f"{model_dir}: no trained model (run `dvc repro train` first?)")
    model = load_any(model_dir, map_location=device).to(device)
    tokenizer = folder_tokenizer(model_dir)
    val = load_val_sets(val_dir)
    for name, blocks in val.items():
        check_compatible(
            blocks.manifest, Path(val_dir) / name, model.config.vocab_size, model.config.block_size,
            tokenizer, f"the model in {model_dir}",
        )
    token_bytes = load_tokenizer(model_dir / TOKENIZER_DIR).token_bytes()
    metrics = score_sources(model, val, cfg.max_blocks, cfg.batch_size, device, token_bytes)
    if train_dir is not None:
        metrics.update(unigram_baseline(load_blocks(train_dir), val, cfg.max_blocks, model.config.vocab_size))
    return dict(sorted(metrics.items()))


@cli
def main() -> None:
    params = load_params()
    metrics = evaluate(MODEL_DIR, VAL_BLOCKS, params.evaluate, TRAIN_BLOCKS)
    write_json(METRICS_FILE, metrics)
    print(
        f"eval: loss {metrics['loss']:.4f} (unigram baseline {metrics['unigram_loss']:.4f}), "
        f"{metrics['bpb']:.3f} bits per byte, over {metrics['tokens']} tokens -> {METRICS_FILE}"
    )


if __name__ == "__main__":
    main()
