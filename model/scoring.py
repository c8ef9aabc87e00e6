"""Loss on held-out data, as the trainer's periodic evaluation, the evaluate stage and fine-tuning
share it, and the checks that data and model fit each other."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from model.folders import TRAIN_MANIFEST_FILE
from model.runtime import autocast_for
from pipeline.blocks import Blocks, load_blocks
from pipeline.errors import PipelineError
from pipeline.io import read_json
from pipeline.tokenizer import HF_TOKENIZER_FILE, hf_tokenizer_name


def tokenizer_name(manifest: dict) -> Optional[str]:
    """The tokenizer named by a manifest (`tokenizer` may be a name or a mapping with one)."""
    value = manifest.get("tokenizer")
    if isinstance(value, dict):
        value = value.get("name") or value.get("kind")
    return value


def folder_tokenizer(folder: Path) -> Optional[str]:
    """The tokenizer a model folder was trained with: its train manifest's, else the content-hash
    name of a Hugging Face folder's `tokenizer.json`, else unknown (None)."""
    if (folder / TRAIN_MANIFEST_FILE).is_file():
        return tokenizer_name(read_json(folder / TRAIN_MANIFEST_FILE))
    if (folder / HF_TOKENIZER_FILE).is_file():
        return hf_tokenizer_name(folder / HF_TOKENIZER_FILE)
    return None


def check_compatible(
    manifest: dict, where: str | Path, vocab_size: int, block_size: int, tokenizer: Optional[str], model_label: str
) -> None:
    """Refuse data whose tokenizer, vocab size or context length does not fit the model: one-line PipelineError."""
    data_tok = tokenizer_name(manifest)
    if tokenizer is not None and data_tok is not None and tokenizer.startswith("hf-") != data_tok.startswith("hf-"):
        tokenizer = None  # a folder's tokenizer.json hash cannot be compared with a name such as gpt2: sizes must match
    if tokenizer is not None and data_tok is not None and data_tok != tokenizer:
        raise PipelineError(f"{where}: data tokenized with '{data_tok}' but {model_label} uses '{tokenizer}'")
    # A Hugging Face model's embedding may be padded past its tokenizer (same tokenizer.json, checked by hash).
    same_hf_file = tokenizer is not None and tokenizer == data_tok and tokenizer.startswith("hf-")
    if int(manifest["vocab_size"]) > vocab_size or (int(manifest["vocab_size"]) != vocab_size and not same_hf_file):
        raise PipelineError(
            f"{where}: vocab size {manifest['vocab_size']} does not match {model_label} (vocab size {vocab_size})"
        )
    if int(manifest["context_length"]) > block_size:
        raise PipelineError(
            f"{where}: context length {manifest['context_length']} exceeds {model_label} block size {block_size}"
        )


def load_val_sets(val_dir: str | Path) -> dict[str, Blocks]:
    """Every `<val_dir>/<source>/` block folder, by source name (sorted)."""
    val_dir = Path(val_dir)
    if not val_dir.is_dir():
        raise PipelineError(f"{val_dir}: not found (run `dvc repro pack` first?)")
    return {p.name: load_blocks(p) for p in sorted(val_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def spread_rows(total: int, count: int) -> np.ndarray:
    """`count` block rows spread evenly over `total` (all when count <= 0 or >= total). Blocks follow
    the store's document order, so the first rows alone would score a biased few documents."""
    if count <= 0 or count >= total:
        return np.arange(total)
    return np.floor(np.arange(count) * (total / count)).astype(np.int64)


@torch.no_grad()
def summed_loss(model: torch.nn.Module, batches: Iterable[dict], device: torch.device, doc_mask: bool = False,
                precision: str = "auto") -> tuple[float, int]:
    """Cross-entropy summed over the loss-masked targets of `batches` (numpy or torch: inputs,
    targets, loss_mask, segment_ids), and their count, in eval mode (the mode is restored)."""
    autocast = autocast_for(device, precision)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for arrays in batches:
        batch = {k: torch.as_tensor(v).to(device) for k, v in arrays.items()}
        n = int(batch["loss_mask"].sum())
        if n == 0:
            continue
        with autocast():
            _, loss = model(batch["inputs"], targets=batch["targets"], loss_mask=batch["loss_mask"],
                            segment_ids=batch.get("segment_ids") if doc_mask else None)
        total += float(loss) * n
        count += n
    model.train(was_training)
    return total, count


def block_losses(
    model: torch.nn.Module,
    blocks: Blocks,
    rows: np.ndarray,
    batch_size: int,
    device: torch.device,
    doc_mask: bool = False,
    token_bytes: Optional[np.ndarray] = None,
    precision: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each block of `rows`: the cross-entropy summed over its loss-masked targets, their count,
    and (with `token_bytes`, the UTF-8 size of each token id) the bytes they stand for; float64 and
    int64 arrays of len(rows). Every batch has `batch_size` rows (the last one is topped up with
    masked-out repeats), so a compiled model sees one shape. Eval mode; the mode is restored."""
    autocast = autocast_for(device, precision)
    was_training = model.training
    model.eval()
    losses, counts, nbytes = np.zeros(len(rows)), np.zeros(len(rows), np.int64), np.zeros(len(rows), np.int64)
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            arrays = blocks.batch(np.resize(part, batch_size))
            arrays["loss_mask"][len(part) :] = False
            mask = arrays["loss_mask"][: len(part)]
            if token_bytes is not None:
                nbytes[start : start + len(part)] = (token_bytes[arrays["targets"][: len(part)]] * mask).sum(axis=1)
            counts[start : start + len(part)] = mask.sum(axis=1)
            batch = {k: torch.as_tensor(v).to(device) for k, v in arrays.items()}
            with autocast():
                logits, _ = model(batch["inputs"], segment_ids=batch.get("segment_ids") if doc_mask else None)
            targets = batch["targets"].long().masked_fill(~batch["loss_mask"].bool(), -100)  # (B, T)
            per_token = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none")
            losses[start : start + len(part)] = per_token.view(targets.shape).sum(dim=1)[: len(part)].double().cpu().numpy()
    model.train(was_training)
    return losses, counts, nbytes
