"""Shared fixtures: tokenizer folders built once per test session, no network beyond the package index."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config import TokenizerConfig
from pipeline.vocab import build_vocab

# Tiny models run fastest on one thread, and tests must not fight each other (or CI's 2 cores) for threads.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def gpt2_vocab(tmp_path_factory) -> Path:
    """The GPT-2 vocab folder, as the `vocab` stage writes it (cached per user after the first fetch)."""
    out = tmp_path_factory.mktemp("vocab") / "gpt2"
    build_vocab(TokenizerConfig(name="gpt2"), [], out)
    return out
