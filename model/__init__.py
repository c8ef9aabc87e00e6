"""GPT-2 model, trainer, evaluation and generation."""

from model.gpt import GPT, GPTConfig, load_any
from model.llama import Llama, LlamaConfig

__all__ = ["GPT", "GPTConfig", "Llama", "LlamaConfig", "load_any"]
