"""GPT-2 model, trainer, evaluation and generation."""

from model.gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
