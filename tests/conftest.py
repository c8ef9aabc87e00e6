"""Shared fixtures: tokenizer folders built once per test session, no network beyond the package index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.config import TokenizerConfig
from pipeline.vocab import build_vocab

REPO = Path(__file__).resolve().parents[1]

# Tiny models run fastest on one thread, and tests must not fight each other (or CI's 2 cores) for threads.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def gpt2_vocab(tmp_path_factory) -> Path:
    """The GPT-2 vocab folder, as the `vocab` stage writes it (cached per user after the first fetch)."""
    out = tmp_path_factory.mktemp("vocab") / "gpt2"
    build_vocab(TokenizerConfig(name="gpt2"), {}, out)
    return out


def write_char_vocab(path: Path, chars: str) -> Path:
    """A `char` tokenizer folder for the given characters."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "chars.json").write_text(json.dumps({"chars": "".join(sorted(set(chars)))}))
    (path / "tokenizer.json").write_text(json.dumps({"kind": "char", "name": "char", "vocab_size": len(set(chars)) + 2}))
    return path
