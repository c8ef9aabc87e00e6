"""The `finetune` stage: instruction fine-tuning, with the loss on the response tokens only.

`python -m model.finetune` reads the `finetune` params section and
- `finetune.data` (default `data/instructions.jsonl`): instruction records or conversations
  (model/records.py, which also turns them into examples and loss masks);
- `finetune.init_from` (default `data/model`): this project's checkpoint folder (its tokenizer is
  in `tokenizer/`), a LoRA adapter folder, or a Hugging Face folder (the tokenizer then comes
  from `finetune.vocab`);
- `finetune.template`: how records become text (model/templates.py);
- `finetune.lora`: null trains every weight; `{rank, alpha, dropout, targets}` trains LoRA
  adapters on the target Linear layers only (model/lora.py);

and writes
- `data/finetuned/`: the model (`model.safetensors`, `model_config.json`; with LoRA only the
  adapters, `adapter.safetensors` and `adapter_config.json` naming the base folder), `tokenizer/`,
  and `template.json`, the template the records were rendered with. `python -m model.generate
  --checkpoint data/finetuned --instruction "..."` renders its prompt with the same template and
  stops at its stop token; `load_any` loads either kind of folder as a full model;
- `metrics/finetune.json`: the response loss before and after, the train loss of each epoch and
  the number of trained parameters.

Records longer than the model's context are cut at the end (reported); one with no learned token
left is skipped (reported). Training: AdamW (decay on 2-D weights), linear warmup then cosine
decay over `epochs * steps_per_epoch`, gradient clipping, a seeded shuffle per epoch; each step is
the trainer's own (`model.optim.optimizer_step`).
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from model.config import FinetuneConfig
from model.folders import TEMPLATE_FILE, TOKENIZER_DIR, load_any, refuse_untracked_base, tokenizer_folder, write_adapter, write_ours
from model.lora import adapter_state, apply_lora, trainable_params
from model.optim import adamw, check_finite, optimizer_step, warmup_cosine
from model.records import Encoded, collate, encode_records, load_records
from model.runtime import autocast_for, prepare, resolve_device
from model.scoring import summed_loss
from model.templates import Template, get_template
from pipeline.commands import stage_arguments
from pipeline.config import load_params
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_dir, write_json
from pipeline.paths import FINETUNED_DIR, METRICS_DIR
from pipeline.tokenizer import Tokenizer, load_tokenizer

METRICS_FILE = METRICS_DIR / "finetune.json"


# ---- training ----------------------------------------------------------------------------------------


def lr_at(step: int, total_steps: int, cfg: FinetuneConfig) -> float:
    """The fine-tuning schedule (its own warmup, lr and min_lr): decay ends at the last step."""
    return warmup_cosine(step, cfg.warmup_iters, total_steps - 1, cfg.lr, cfg.min_lr)


def response_loss(model, examples, pad_id: int, batch_size: int, device: torch.device) -> float:
    """Mean cross-entropy over the response (+EOS) tokens of all examples, in eval mode."""
    batches = (collate(examples[start : start + batch_size], pad_id) for start in range(0, len(examples), batch_size))
    total, count = summed_loss(model, batches, device)
    return total / max(1, count)


def train_examples(
    model, examples, pad_id: int, cfg: FinetuneConfig, seed: int, device: torch.device, print_fn: Callable = print
) -> list[float]:
    """Fine-tune `model` in place; return the train loss of each epoch (token-weighted over its steps)."""
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    optimizer = adamw(model, cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), device)
    autocast = autocast_for(device)
    torch.manual_seed(seed)  # dropout
    model.train()
    epoch_losses, step = [], 0
    for epoch in range(cfg.epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(examples))
        loss_sum, norm_max, token_count, start_time = torch.zeros((), device=device), torch.zeros((), device=device), 0, time.perf_counter()
        for start in range(0, len(order), cfg.batch_size):
            batch = collate([examples[i] for i in order[start : start + cfg.batch_size]], pad_id)
            n = int(batch["loss_mask"].sum())
            batch = {k: v.to(device) for k, v in batch.items()}
            lr = lr_at(step, total_steps, cfg)
            loss, grad_norm = optimizer_step(model, optimizer, [batch], lr / cfg.lr, step, cfg.grad_clip, autocast)
            loss_sum, norm_max = loss_sum + loss * n, torch.maximum(norm_max, grad_norm)
            token_count, step = token_count + n, step + 1
        check_finite(float(loss_sum), float(norm_max), "finetune", step - steps_per_epoch + 1, step, lr)
        epoch_losses.append(float(loss_sum) / max(1, token_count))
        print_fn(
            f"finetune: epoch {epoch + 1}/{cfg.epochs}: train loss {epoch_losses[-1]:.4f} "
            f"({steps_per_epoch} steps, lr {lr:.2e}, {time.perf_counter() - start_time:.1f}s)"
        )
    return epoch_losses


def load_model(cfg: FinetuneConfig, init_from: Path, device: torch.device, print_fn: Callable) -> torch.nn.Module:
    """The model to fine-tune: `init_from` as it is, or with LoRA adapters on the target layers (the rest frozen)."""
    model = load_any(init_from, map_location=device, dropout=cfg.dropout)
    total = trainable_params(model)
    if cfg.lora is None:
        return model
    lora = cfg.lora
    names = apply_lora(model, lora.rank, lora.alpha, lora.dropout, lora.targets, where="finetune.lora.targets")
    print_fn(
        f"finetune: LoRA rank {lora.rank} (alpha {lora.alpha:g}) on {len(names)} layers: "
        f"{trainable_params(model):,} of {total:,} parameters train"
    )
    return model


def report_encoding(encoded: Encoded, tokenizer: Tokenizer, block_size: int, print_fn: Callable) -> None:
    """Warn about unknown characters and about records cut or skipped at the context length."""
    if encoded.unknown_chars:
        shown = ", ".join(repr(c) for c in sorted(encoded.unknown_chars)[:10])
        print_fn(f"finetune: warning: characters the '{tokenizer.name}' vocabulary does not know become 'unknown': {shown}")
    for what, where in (("cut to the model's context of", encoded.truncated), ("skipped: nothing to learn within the context of", encoded.skipped)):
        if where:
            print_fn(f"finetune: {len(where)} record(s) {what} {block_size} tokens, first {where[0]}")


def write_checkpoint(model, out_dir: Path, init_from: Path, tok_dir: Path, template: Template, lora: bool) -> None:
    """The output folder, atomically: the model (or, with LoRA, only the adapters), tokenizer/ and template.json."""
    with atomic_dir(out_dir) as tmp:
        if lora:
            write_adapter(tmp, *adapter_state(model), base=init_from, final_folder=out_dir)
            shutil.copytree(tok_dir, tmp / TOKENIZER_DIR)
        else:
            write_ours(model, tmp, tok_dir)
        write_json(tmp / TEMPLATE_FILE, template.to_dict())


def finetune(cfg: FinetuneConfig, seed: int, out_dir: str | Path, print_fn: Callable = print) -> dict:
    """Fine-tune `cfg.init_from` on `cfg.data`; write the checkpoint folder `out_dir` atomically; return the metrics."""
    out_dir, init_from = Path(out_dir), Path(cfg.init_from)
    records = load_records(cfg.data)
    if not init_from.is_dir():
        raise PipelineError(f"finetune.init_from: {init_from} is not a folder (train a model first, or point it at a Hugging Face GPT-2 folder)")
    if cfg.lora is not None and init_from.resolve() == out_dir.resolve():
        raise PipelineError(f"finetune.init_from: {init_from} is also the output folder, and LoRA adapters need their base kept")
    refuse_untracked_base("finetune.init_from", init_from)
    tok_dir = tokenizer_folder(init_from, Path(cfg.vocab), "set finetune.vocab")
    tokenizer = load_tokenizer(tok_dir)
    template = get_template(cfg.template, [init_from, tok_dir])
    device = resolve_device(cfg.device)
    prepare(device)
    torch.manual_seed(seed)
    model = load_model(cfg, init_from, device, print_fn)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise PipelineError(
            f"{tok_dir}: tokenizer '{tokenizer.name}' has {tokenizer.vocab_size} tokens, the model in {init_from} only {model.config.vocab_size}"
        )
    encoded = encode_records(tokenizer, records, model.config.block_size + 1, template)
    report_encoding(encoded, tokenizer, model.config.block_size, print_fn)
    examples = encoded.examples
    if not examples:
        raise PipelineError(f"{cfg.data}: no record fits the model's context of {model.config.block_size} tokens")
    pad_id = tokenizer.pad_id
    print_fn(
        f"finetune: {len(examples)} records from {cfg.data} ({template.name} template), {model.num_params() / 1e6:.2f}M params "
        f"from {init_from}, {cfg.epochs} epochs of {math.ceil(len(examples) / cfg.batch_size)} steps on {device}"
    )
    before = response_loss(model, examples, pad_id, cfg.batch_size, device)
    print_fn(f"finetune: response loss before {before:.4f}")
    epoch_losses = train_examples(model, examples, pad_id, cfg, seed, device, print_fn)
    after = response_loss(model, examples, pad_id, cfg.batch_size, device)
    print_fn(f"finetune: response loss after {after:.4f}")
    model.eval()
    write_checkpoint(model, out_dir, init_from, tok_dir, template, lora=cfg.lora is not None)
    return {
        "records": len(examples),
        "truncated": len(encoded.truncated),
        "skipped": len(encoded.skipped),
        "steps": cfg.epochs * math.ceil(len(examples) / cfg.batch_size),
        "trained_params": trainable_params(model),
        "loss_before": before,
        "loss_after": after,
        "train_loss": epoch_losses[-1],
        **{f"train_loss_epoch_{i}": v for i, v in enumerate(epoch_losses, start=1)},
    }


@cli
def main(argv: Optional[Sequence[str]] = None) -> None:
    stage_arguments(__doc__, "model.finetune", argv)
    params = load_params()
    metrics = finetune(params.finetune, params.seed, FINETUNED_DIR)
    write_json(METRICS_FILE, metrics)
    print(f"finetune: done, response loss {metrics['loss_before']:.4f} -> {metrics['loss_after']:.4f} -> {FINETUNED_DIR}")


if __name__ == "__main__":
    main()
