"""Data pipeline stages (snapshot, scan, vocab, tokenize, split, mix, pack) and the block reader.

`pipeline.load_blocks(path)` opens packed blocks; it is imported on first use, so that importing
one stage never imports another stage's modules.
"""

__all__ = ["Blocks", "load_blocks"]


def __getattr__(name: str):
    if name in __all__:
        from pipeline import blocks

        return getattr(blocks, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
