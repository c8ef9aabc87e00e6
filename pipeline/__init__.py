"""Data pipeline stages: sources -> tokenize -> split -> mix -> pack, and the block reader."""

from pipeline.blocks import Blocks, load_blocks

__all__ = ["Blocks", "load_blocks"]
