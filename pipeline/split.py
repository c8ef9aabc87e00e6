"""The `split@<source>` stage: train/val by a stable hash of each document's content.

A document goes to val when the first 8 bytes of its content hash, read as a fraction of 2**64,
fall below `split.val_fraction`. The decision looks at nothing but the document itself, so it never
changes with the mixture, the seed or the other sources, and identical documents share a split.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.config import SplitConfig, load_params
from pipeline.docs import DocTable, DocWriter
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_dir, write_json
from pipeline.tokenize import DOCS_FILE, TOKENS_DIR

SPLIT_DIR = Path("data/split")
SPLITS = ("train", "val")


def is_val(doc_id: str, val_fraction: float) -> bool:
    """True when the document with this content hash belongs to the validation split."""
    return int(doc_id[:16], 16) < val_fraction * 2.0**64  # exact: int vs float compare, no rounding


def split_documents(docs: DocTable, cfg: SplitConfig, out_dir: Path, name: str) -> dict:
    """Write `train.arrow` and `val.arrow` into `out_dir`; return the counts per split."""
    counts = {}
    with atomic_dir(out_dir) as tmp:
        writers = {split: DocWriter(tmp / f"{split}.arrow", docs.dtype) for split in SPLITS}
        for i, (identifier, source) in enumerate(zip(docs.doc_ids, docs.sources)):
            split = "val" if is_val(identifier, cfg.val_fraction) else "train"
            writers[split].write(identifier, source, docs.tokens(i))
        for split, writer in writers.items():
            writer.close()
            counts[split] = {"docs": writer.docs, "tokens": writer.tokens}
        if counts["train"]["docs"] == 0:
            raise PipelineError(f"sources.{name}: every document landed in val; lower split.val_fraction")
        write_json(tmp / "manifest.json", {"val_fraction": cfg.val_fraction, **counts})
    return counts


@cli
def main() -> None:
    if len(sys.argv) != 2:
        raise PipelineError("usage: python -m pipeline.split <source name>")
    name = sys.argv[1]
    cfg = load_params().split
    source_file = TOKENS_DIR / name / DOCS_FILE
    counts = split_documents(DocTable(source_file), cfg, SPLIT_DIR / name, name)
    if cfg.val_fraction > 0 and counts["val"]["docs"] == 0:
        print(f"split {name}: warning: no document landed in val ({counts['train']['docs']} documents)", file=sys.stderr)
    print(f"split {name}: train {counts['train']}, val {counts['val']}")


if __name__ == "__main__":
    main()
