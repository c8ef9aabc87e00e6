"""The `finetune` stage: instruction fine-tuning, with the loss on the response tokens only.

`python -m model.finetune` reads the `finetune` params section and
- `finetune.data` (default `data/instructions.jsonl`): records in a JSON list (`.json`) or one JSON
  object per line (`.jsonl`): Alpaca records (a string `instruction`, an optional string `input`
  and a string `output`) or conversations (`messages`: a list of `{"role": "system" | "user" |
  "assistant", "content": str}` with at least one assistant turn). Other keys are ignored. A
  malformed record stops the stage with a one-line error naming the file and the record;
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

The loss mask covers every assistant reply and the stop token that ends it (so the model learns to
stop), never the prompts, the other turns or the padding. Records longer than the model's context
are cut at the end (reported); one with no learned token left is skipped (reported). Training:
AdamW (decay on 2-D weights), linear warmup then cosine decay over `epochs * steps_per_epoch`,
gradient clipping, a seeded shuffle per epoch.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from model.optim import adamw, check_finite, optimizer_step, warmup_cosine
from model.runtime import Dist, autocast_for, prepare, resolve_device
from model.scoring import summed_loss
from model.lora import apply_lora, save_adapter, trainable_params
from model.templates import (
    DEFAULT_TEMPLATE, PROMPT, STOP, TEMPLATE_FILE, Template, get_template, instruction_messages,
    render_segments, stop_tokens,
)
from pipeline.config import FinetuneConfig, load_params
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_dir, write_json
from pipeline.paths import FINETUNED_DIR, METRICS_DIR
from pipeline.tokenizer import SPEC_FILE, Tokenizer, load_tokenizer

METRICS_FILE = METRICS_DIR / "finetune.json"
FIELDS = ("instruction", "input", "output")
ROLES = ("system", "user", "assistant")


# ---- records ---------------------------------------------------------------------------------------


@dataclass
class Record:
    """One example: an Alpaca record (instruction, optional input, output) or a conversation
    (`messages`; instruction and output are then empty). `where` names it: 'file: line N' or 'file: record N'."""

    instruction: str
    output: str
    input: Optional[str] = None
    where: str = ""
    messages: Optional[list[dict]] = None

    def conversation(self) -> list[dict]:
        """The record as messages (model/templates.py)."""
        return self.messages if self.messages is not None else instruction_messages(self.instruction, self.input, self.output)


def check_messages(messages: object, where: str) -> list[dict]:
    """Validate a conversation: a list of {role, content} with at least one non-empty assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise PipelineError(f"{where}: 'messages' must be a non-empty list of role/content objects")
    for i, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise PipelineError(f"{where}: message {i} must have a 'role' ({', '.join(ROLES)}) and a string 'content'")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise PipelineError(f"{where}: 'messages' has no assistant turn to learn from")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def check_record(raw: object, where: str) -> Record:
    """Validate one parsed record; raise a one-line PipelineError naming it."""
    if not isinstance(raw, dict):
        raise PipelineError(f"{where}: a record must be a JSON object, got {type(raw).__name__}")
    if "messages" in raw:
        return Record(instruction="", output="", where=where, messages=check_messages(raw["messages"], where))
    for name in ("instruction", "output"):
        if name not in raw:
            raise PipelineError(f"{where}: missing '{name}' (a record needs 'instruction' and 'output', 'input' is optional; or 'messages')")
    for name in FIELDS:
        value = raw.get(name)
        if name == "input" and value is None:
            continue
        if not isinstance(value, str):
            raise PipelineError(f"{where}: '{name}' must be a string, got {type(value).__name__} {json.dumps(value)[:40]}")
    for name in ("instruction", "output"):
        if not raw[name].strip():
            raise PipelineError(f"{where}: '{name}' is empty")
    return Record(instruction=raw["instruction"], output=raw["output"], input=raw.get("input"), where=where)


def load_records(path: str | Path) -> list[Record]:
    """Records of a `.json` file (a list of objects) or a `.jsonl` file (one object per line; blank lines skipped)."""
    path = Path(path)
    if path.suffix not in (".json", ".jsonl"):
        raise PipelineError(f"{path}: instruction records must be a .json or .jsonl file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found") from None
    except UnicodeDecodeError as exc:
        raise PipelineError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    records = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}: line {number}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PipelineError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            records.append(check_record(raw, where))
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PipelineError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
        if not isinstance(data, list):
            raise PipelineError(f"{path}: a .json file of records must hold a list, got {type(data).__name__}")
        records = [check_record(raw, f"{path}: record {i}") for i, raw in enumerate(data, start=1)]
    if not records:
        raise PipelineError(f"{path}: no records")
    return records


# ---- encoding and batches --------------------------------------------------------------------------


def encode_segments(tokenizer: Tokenizer, segments: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of the rendered segments, and a same-length bool mask, True on response and stop tokens.

    Each segment is encoded on its own; a stop becomes its token (or its text's tokens and EOS).
    """
    parts = [stop_tokens(tokenizer, text) if kind == STOP else tokenizer.encode(text) for text, kind in segments]
    ids = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])
    mask = np.concatenate([np.full(len(p), kind != PROMPT) for p, (_, kind) in zip(parts, segments)])
    return ids, mask


def encode_example(
    tokenizer: Tokenizer, record: Record, max_len: Optional[int] = None, template: Template = DEFAULT_TEMPLATE
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of the rendered record, and a same-length bool mask, True on the assistant replies
    and their stop tokens.

    Position i of the mask says whether token i is a target of the loss (it is predicted from the
    tokens before it). max_len: keep only the first max_len tokens (the end goes first).
    """
    ids, mask = encode_segments(tokenizer, render_segments(record.conversation(), template))
    if max_len is not None:
        ids, mask = ids[:max_len], mask[:max_len]
    return ids, mask


@dataclass
class Encoded:
    """The records as training examples, and what encoding had to give up."""

    examples: list[tuple[np.ndarray, np.ndarray]]
    truncated: list[str] = field(default_factory=list)  # records cut at the context length
    skipped: list[str] = field(default_factory=list)  # records with no learned token within the context
    unknown_chars: set[str] = field(default_factory=set)  # characters the tokenizer maps to 'unknown'


def encode_records(tokenizer: Tokenizer, records: Sequence[Record], max_len: int, template: Template = DEFAULT_TEMPLATE) -> Encoded:
    """Encode every record, cutting those longer than max_len (the model's context + 1)."""
    out = Encoded(examples=[])
    unknown = getattr(tokenizer, "unknown_chars", None)
    for record in records:
        segments = render_segments(record.conversation(), template)
        ids, mask = encode_segments(tokenizer, segments)
        if unknown is not None:
            out.unknown_chars |= unknown("".join(text for text, _ in segments))
        if len(ids) > max_len:
            ids, mask = ids[:max_len], mask[:max_len]
            if not mask[1:].any():
                out.skipped.append(record.where)
                continue
            out.truncated.append(record.where)
        out.examples.append((ids, mask))
    return out


def collate(examples: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int) -> dict[str, torch.Tensor]:
    """inputs, targets (B, T) and loss_mask (B, T), padded to the longest example with pad_id (never a target)."""
    T = max(len(ids) for ids, _ in examples) - 1
    inputs = np.full((len(examples), T), pad_id, dtype=np.int64)
    targets = np.full((len(examples), T), pad_id, dtype=np.int64)
    loss_mask = np.zeros((len(examples), T), dtype=bool)
    for row, (ids, mask) in enumerate(examples):
        n = len(ids) - 1
        inputs[row, :n] = ids[:-1]
        targets[row, :n] = ids[1:]
        loss_mask[row, :n] = mask[1:]
    return {"inputs": torch.from_numpy(inputs), "targets": torch.from_numpy(targets), "loss_mask": torch.from_numpy(loss_mask)}


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
            loss, grad_norm = optimizer_step(model, optimizer, [batch], lr / cfg.lr, step, cfg.grad_clip, autocast, Dist())
            loss_sum, norm_max = loss_sum + loss * n, torch.maximum(norm_max, grad_norm)
            token_count, step = token_count + n, step + 1
        check_finite(float(loss_sum), float(norm_max), "finetune", step - steps_per_epoch + 1, step, lr)
        epoch_losses.append(float(loss_sum) / max(1, token_count))
        print_fn(
            f"finetune: epoch {epoch + 1}/{cfg.epochs}: train loss {epoch_losses[-1]:.4f} "
            f"({steps_per_epoch} steps, lr {lr:.2e}, {time.perf_counter() - start_time:.1f}s)"
        )
    return epoch_losses


def tokenizer_dir(init_from: Path, vocab: Path) -> Path:
    """The checkpoint's own `tokenizer/` folder, else the `vocab` folder (Hugging Face checkpoints)."""
    from model.gpt import TOKENIZER_DIR

    if (init_from / TOKENIZER_DIR / SPEC_FILE).is_file():
        return init_from / TOKENIZER_DIR
    if not (vocab / SPEC_FILE).is_file():
        raise PipelineError(f"{init_from} has no {TOKENIZER_DIR}/ folder and {vocab / SPEC_FILE} is missing (set finetune.vocab)")
    return vocab


def load_model(cfg: FinetuneConfig, init_from: Path, device: torch.device, print_fn: Callable) -> torch.nn.Module:
    """The model to fine-tune: `init_from` as it is, or with LoRA adapters on the target layers (the rest frozen)."""
    from model.gpt import load_any

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
    from model.gpt import TOKENIZER_DIR

    with atomic_dir(out_dir) as tmp:
        if lora:
            save_adapter(model, tmp, base=init_from, final_folder=out_dir)
            shutil.copytree(tok_dir, tmp / TOKENIZER_DIR)
        else:
            model.save_files(tmp, tok_dir)
        write_json(tmp / TEMPLATE_FILE, template.to_dict())


def finetune(cfg: FinetuneConfig, seed: int, out_dir: str | Path, print_fn: Callable = print) -> dict:
    """Fine-tune `cfg.init_from` on `cfg.data`; write the checkpoint folder `out_dir` atomically; return the metrics."""
    out_dir, init_from = Path(out_dir), Path(cfg.init_from)
    records = load_records(cfg.data)
    if not init_from.is_dir():
        raise PipelineError(f"finetune.init_from: {init_from} is not a folder (train a model first, or point it at a Hugging Face GPT-2 folder)")
    if cfg.lora is not None and init_from.resolve() == out_dir.resolve():
        raise PipelineError(f"finetune.init_from: {init_from} is also the output folder, and LoRA adapters need their base kept")
    tok_dir = tokenizer_dir(init_from, Path(cfg.vocab))
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
def main() -> None:
    params = load_params()
    metrics = finetune(params.finetune, params.seed, FINETUNED_DIR)
    write_json(METRICS_FILE, metrics)
    print(f"finetune: done, response loss {metrics['loss_before']:.4f} -> {metrics['loss_after']:.4f} -> {FINETUNED_DIR}")


if __name__ == "__main__":
    main()
