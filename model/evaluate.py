"""The `evaluate` stage: loss and perplexity of the trained model on every source's validation blocks.

`python -m model.evaluate` reads `data/model/` and `data/packed/val/<source>/` and writes the flat
DVC metric `metrics/eval.json`: `loss`, `perplexity`, `tokens`, `bpb` over all sources
(token-weighted), and `loss_<source>`, `perplexity_<source>`, `tokens_<source>`, `bpb_<source>`
for each. `bpb` is bits per UTF-8 byte of the scored text: the summed loss in bits over the bytes
the target tokens stand for (EOS stands for none), so models with different tokenizers compare on
one scale. A source without validation blocks reports `tokens_<source>: 0` and null
loss/perplexity/bpb. `unigram_loss[_<source>]` is the baseline a model without context gets on the
same targets (from `data/packed/train`).

`se_loss[_<source>]` and `se_bpb[_<source>]` are standard errors from the finite val set: how far
the score would move on another val set of the same size from the same sources (ratio estimator
over runs of consecutive blocks about one document long: `val_set_groups`). They say nothing about
seed-to-seed noise of training; replicate runs measure that (`pipeline.compare`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from model.config import EvaluateConfig
from model.runtime import resolve_device
from model.scoring import block_losses, check_compatible, folder_tokenizer, load_val_sets, spread_rows
from pipeline.blocks import Blocks, load_blocks
from pipeline.commands import stage_arguments
from pipeline.config import load_params
from pipeline.errors import PipelineError, cli
from pipeline.io import write_json
from pipeline.paths import METRICS_DIR, MODEL_DIR, TRAIN_BLOCKS, VAL_BLOCKS

METRICS_FILE = METRICS_DIR / "eval.json"


def score_sources(
    model: torch.nn.Module, val: dict[str, Blocks], max_blocks: int, batch_size: int, device: torch.device,
    token_bytes: np.ndarray,
) -> dict:
    """Flat metrics: loss/perplexity/tokens/bpb overall (token-weighted) and per source, on the first
    `max_blocks` blocks spread over each val set (0: all), each loss and bpb with its standard error
    (`se_loss[_<source>]`, `se_bpb[_<source>]`: `val_set_groups`)."""
    doc_mask = bool(getattr(model.config, "doc_mask", False))
    metrics: dict = {}
    groups, strata = [], []
    for name, blocks in val.items():
        rows = spread_rows(len(blocks), max_blocks)
        scores = np.stack(block_losses(model, blocks, rows, batch_size, device, doc_mask, token_bytes))  # (3, rows)
        grouped = val_set_groups(scores, blocks.manifest, len(rows) / max(1, len(blocks)))
        metrics.update(_loss_metrics(grouped, f"_{name}"))
        groups.append(grouped)
        strata.append(np.full(grouped.shape[1], len(strata)))
    metrics.update(_loss_metrics(np.concatenate(groups, axis=1) if groups else np.zeros((3, 0)), "",
                                 np.concatenate(strata) if strata else None))
    return dict(sorted(metrics.items()))


def val_set_groups(scores: np.ndarray, manifest: dict, scored_share: float) -> np.ndarray:
    """Per-block (loss sum, targets, bytes) summed over runs of consecutive blocks about one document
    long, the units whose spread gives the standard error. Blocks of one document are not independent
    evidence (a hard document is hard in all its blocks), so the unit is a document's worth of blocks:
    the manifest's tokens per document over the context (one block when it names no documents),
    scaled by the share of blocks scored. The mean document length is used, not each document's
    own blocks, so a corpus of very uneven documents gets a somewhat too small error."""
    docs = sum(int(entry.get("docs", 0)) for entry in manifest.get("sources", {}).values())
    doc_blocks = int(manifest.get("n_tokens", 0)) / docs / int(manifest["context_length"]) if docs else 1.0
    size = max(1, math.ceil(doc_blocks * scored_share))
    return np.stack([np.bincount(np.arange(scores.shape[1]) // size, weights=row) for row in scores]) if scores.size else scores


def ratio_se(numerator: np.ndarray, denominator: np.ndarray, strata: np.ndarray | None = None) -> float | None:
    """Standard error of sum(numerator) / sum(denominator) over independent units (the linearised
    ratio estimator); with `strata` (a label per unit: the source), each stratum's size is held
    fixed, so only the spread within a source counts, not the gap between sources. None with fewer
    than two units in a stratum."""
    strata = np.zeros(len(numerator), np.int64) if strata is None else strata
    total = float(denominator.sum())
    if total == 0:
        return None
    residual = numerator - float(numerator.sum()) / total * denominator
    variance = 0.0
    for label in np.unique(strata):
        part = residual[strata == label]
        if len(part) < 2:
            return None
        variance += len(part) / (len(part) - 1) * float(((part - part.mean()) ** 2).sum())
    return math.sqrt(variance) / total


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


def _loss_metrics(groups: np.ndarray, suffix: str, strata: np.ndarray | None = None) -> dict:
    """loss, perplexity, tokens, bpb and the standard errors of loss and bpb, from (3, units) sums
    (`strata`: the source of each unit, for the overall scores)."""
    total, count, nbytes = float(groups[0].sum()), int(groups[1].sum()), int(groups[2].sum())
    loss = total / count if count else None
    return {
        f"loss{suffix}": loss,
        f"perplexity{suffix}": math.exp(min(loss, 700.0)) if loss is not None else None,
        f"tokens{suffix}": count,
        f"bpb{suffix}": total / math.log(2) / nbytes if nbytes else None,
        f"se_loss{suffix}": ratio_se(groups[0], groups[1], strata) if count else None,
        f"se_bpb{suffix}": ratio_se(groups[0] / math.log(2), groups[2], strata) if nbytes else None,
    }


def evaluate(model_dir: str | Path, val_dir: str | Path, cfg: EvaluateConfig, train_dir: str | Path | None = None) -> dict:
    """Score the model saved in `model_dir` on every source under `val_dir`; return the flat metrics.

    With `train_dir`, also the unigram baseline of that train data (`unigram_loss[_<source>]`)."""
    from model.folders import CONFIG_FILE, TOKENIZER_DIR, load_any
    from pipeline.tokenizer import load_tokenizer

    device = resolve_device(cfg.device)
    model_dir = Path(model_dir)
    if not (model_dir / CONFIG_FILE).is_file():
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
def main(argv: Optional[Sequence[str]] = None) -> None:
    stage_arguments(__doc__, "model.evaluate", argv)
    params = load_params()
    metrics = evaluate(MODEL_DIR, VAL_BLOCKS, params.evaluate, TRAIN_BLOCKS)
    write_json(METRICS_FILE, metrics)
    print(
        f"eval: loss {metrics['loss']:.4f} (unigram baseline {metrics['unigram_loss']:.4f}), "
        f"{metrics['bpb']:.3f} bits per byte, over {metrics['tokens']} tokens -> {METRICS_FILE}"
    )


if __name__ == "__main__":
    main()
