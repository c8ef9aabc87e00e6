"""Where the stages read and write: every data path in one place (dvc.yaml names the same ones).

Stages import their paths from here, never from another stage's module, so that a stage's DVC
deps stay its own and editing one stage re-runs only what it affects.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path("data")
RAW_DIR = DATA / "raw"  # snapshot@<name>: embedded and hub datasets copied into the project
SCAN_DIR = DATA / "scan"  # scan@<name>: what data-dependent vocabularies learn from each source
SCAN_FILE = "scan.json"  # in a source's scan folder: what was scanned for, and the characters (char)
SAMPLE_FILE = "sample.jsonl"  # ... and the train documents a BPE learns from (bpe), one JSON string a line
VOCAB_DIR = DATA / "vocab"  # vocab: the tokenizer's files
TOKENS_DIR = DATA / "tokens"  # tokenize@<name>: the token store of each source
DEDUP_DIR = DATA / "dedup"  # dedup: per source, which documents are kept and the hash their group splits by
KEEP_FILE = "keep.npy"
SPLIT_HASHES_FILE = "split_hashes.npy"
SPLIT_DIR = DATA / "split"  # split@<name>: train/val document indices over the store
MIX_DIR = DATA / "mix"  # mix: the train mixture, an index over the stores
PACKED_DIR = DATA / "packed"  # pack: blocks as pieces of documents, an index over the stores
TRAIN_BLOCKS = PACKED_DIR / "train"
VAL_BLOCKS = PACKED_DIR / "val"  # one folder per source

MODEL_DIR = DATA / "model"
CHECKPOINT_DIR = DATA / "checkpoints"
FINETUNED_DIR = DATA / "finetuned"
SAMPLES_FILE = DATA / "samples.md"
WANDB_DIR = DATA / "wandb"

METRICS_DIR = Path("metrics")
REPORTS_DIR = Path("reports")
DEDUP_METRICS = METRICS_DIR / "dedup.json"
DEDUP_REPORT = REPORTS_DIR / "dedup.md"

MANIFEST_FILE = "manifest.json"  # every data output folder has one

# A path param is a DVC dep of the stages that read it (tokenizer.path, train.init_from), so it must
# name an existing path even when unused: this file of the repository stands for "no folder".
NO_FOLDER = "models/README.md"
