"""nanoGPT's OpenWebText preparation recipe, as a baseline for the data pipeline (bench only).

    python bench/nanogpt_prepare.py OUT VOCAB_DIR FILE.jsonl [FILE.jsonl ...] [--workers N]

The recipe of nanoGPT's `data/openwebtext/prepare.py`, written here from its description: load the
JSONL files with Hugging Face `datasets`, hold out 0.05% as val (`train_test_split`, seed 2357),
tokenize with GPT-2's BPE (`encode_ordinary`, then EOS) in `Dataset.map` over all cores, and write
each split as one uint16 memmap, filled shard by shard. The tokenizer is built from the project's
local vocab folder (tiktoken's own `get_encoding("gpt2")` would need the network), so both sides
produce the same ids. The datasets cache goes into OUT, so every run starts cold.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHARDS = 1024  # pieces each split is written in


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("vocab", type=Path)
    p.add_argument("files", nargs="+")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["HF_DATASETS_CACHE"] = str(args.out / "hf-cache")
    import datasets

    from pipeline.tokenizer import load_tokenizer

    encoding = load_tokenizer(args.vocab)._encoding
    eos = encoding.eot_token

    def tokenize(example: dict) -> dict:
        ids = encoding.encode_ordinary(example["text"]) + [eos]
        return {"ids": ids, "len": len(ids)}

    raw = datasets.load_dataset("json", data_files=args.files, split="train", cache_dir=str(args.out / "hf-cache"))
    splits = raw.train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    splits["val"] = splits.pop("test")
    tokenized = splits.map(tokenize, remove_columns=["text"], num_proc=args.workers, desc="tokenizing")
    for name, dataset in tokenized.items():
        total = int(np.sum(dataset["len"], dtype=np.uint64))
        out = np.memmap(args.out / f"{name}.bin", dtype=np.uint16, mode="w+", shape=(total,))
        at, shards = 0, min(SHARDS, len(dataset))
        for k in range(shards):
            shard = dataset.shard(num_shards=shards, index=k, contiguous=True).with_format("numpy")
            ids = np.concatenate(shard["ids"]) if len(shard) else np.zeros(0, np.uint16)
            out[at : at + len(ids)] = ids
            at += len(ids)
        out.flush()
        print(f"{name}: {total} tokens")


if __name__ == "__main__":
    main()
