"""Instruction records and how they become training examples: the loss mask covers every
assistant reply and the stop token that ends it, never the prompts, the other turns or the padding.

Records come from a JSON list (`.json`) or one JSON object per line (`.jsonl`): Alpaca records (a
string `instruction`, an optional string `input` and a string `output`) or conversations
(`messages`: a list of `{"role": "system" | "user" | "assistant", "content": str}` with at least one
assistant turn). Other keys are ignored. A malformed record is a one-line error naming the file and
the record. Rendering is model/templates.py's; the fine-tuning loop is model/finetune.py's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from model.templates import DEFAULT_TEMPLATE, PROMPT, STOP, Template, instruction_messages, render_segments, stop_tokens
from pipeline.errors import PipelineError
from pipeline.tokenizer import Tokenizer

FIELDS = ("instruction", "input", "output")
ROLES = ("system", "user", "assistant")


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

    Each segment is encoded on its own; a stop becomes its token (or its text's tokens and EOS). With
    a tokenizer that has a BOS (`bos_id`), the ids start with it, as every pretraining document does
    (unless the template wrote it), so fine-tuning and chat prompts read like the documents.
    """
    parts = [stop_tokens(tokenizer, text) if kind == STOP else tokenizer.encode(text) for text, kind in segments]
    bos = getattr(tokenizer, "bos_id", None)
    if bos is not None and [int(i) for p in parts for i in p][:1] != [bos]:
        parts, segments = [[bos], *parts], [("", PROMPT), *segments]
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
