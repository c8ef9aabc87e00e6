"""The params of the data stages, one dataclass per `params.yaml` section, and the whole file.

`load_params()` reads `params.yaml`, rejects unknown keys and bad values with a one-line
`ConfigError` naming the key (pipeline/typed.py), and returns a `Params`: the data sections below
and the model side's (model/config.py), so a bad value anywhere stops the first stage that runs.
Each stage then hands only its own section to its core function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

from model.config import EvaluateConfig, FinetuneConfig, ModelConfig, SampleConfig, TrainConfig, WandbConfig
from pipeline.errors import ConfigError, PipelineError
from pipeline.paths import NO_FOLDER
from pipeline.typed import from_dict, limit

PARAMS_FILE = "params.yaml"
# Params naming a path that a stage reads: dvc.yaml lists them as deps (`${train.init_from}`), and DVC
# interpolates only keys params.yaml spells out, so these must be written even where the default is meant.
TRACKED_PATHS = ("tokenizer.path", "train.init_from", "finetune.data", "finetune.init_from", "finetune.vocab")
# Sections no stage's outputs depend on (where tasks run): no DVC param, so changing them re-runs nothing.
UNTRACKED_SECTIONS = ("executor",)

SourceFormat = Literal["text", "jsonl", "parquet", "hf"]
SnapshotFormat = Literal["hf", "python-docs", "python-stdlib", "package-docs"]
PackMode = Literal["concat", "pad", "bestfit"]


@dataclass
class SnapshotConfig:
    """Data copied into the project (`data/raw/<name>/`, Parquet) so that DVC versions it: a Hugging
    Face hub dataset at a pinned revision, or text that ships with Python."""

    format: SnapshotFormat  # hf | python-docs (English docs prose) | python-stdlib (standard library code) | package-docs (installed packages' READMEs)
    path: Optional[str] = None  # hf: the hub dataset id, e.g. HuggingFaceFW/fineweb-edu
    revision: Optional[str] = None  # hf: pinned revision (commit sha or tag); required
    subset: Optional[str] = None  # hf: configuration name, if the dataset has several
    hf_split: str = "train"  # hf: which split of the dataset to read
    text_field: str = "text"  # hf: the field holding the text
    max_docs: Optional[int] = limit(None, at_least=1)  # hf: stop after this many documents (a sample of a large dataset)

    def validate(self, key: str) -> None:
        if self.format == "hf" and not (self.path and self.revision):
            raise ConfigError(f"{key}: format 'hf' needs path (the dataset id) and a pinned revision")
        if self.format != "hf" and (self.path or self.revision):
            raise ConfigError(f"{key}: path and revision are for format 'hf' only")


@dataclass
class SourceConfig:
    """Where one source's documents come from and how they are read. `path` is a DVC dependency."""

    format: SourceFormat  # text | jsonl | parquet | hf (a local Hugging Face dataset folder)
    path: str  # a file or a folder; a snapshot's is data/raw/<snapshot name>
    glob: Optional[str] = None  # pattern of files inside a folder `path`, e.g. "**/*.md"
    document: Literal["file", "paragraph", "line"] = "file"  # text only: how a file is cut into documents
    text_field: str = "text"  # jsonl, parquet, hf: the field holding the text
    subset: Optional[str] = None  # hf: configuration name, if the dataset has several
    hf_split: str = "train"  # hf: which split of the dataset to read


@dataclass
class TokenizerConfig:
    name: str = "gpt2"  # gpt2 (offline, from the vocab stage) | another tiktoken encoding | char | bpe (trained on your sources) | hf (a model's own)
    vocab_size: int = limit(4096, at_least=260)  # bpe: tokens in the trained vocabulary (256 bytes, EOS, merges)
    sample_bytes: int = limit(50_000_000, at_least=1)  # bpe: at most this many bytes of each source's train documents to learn from
    path: str = NO_FOLDER  # hf: the model folder holding tokenizer.json (+ tokenizer_config.json); a DVC dep of vocab

    def validate(self, key: str) -> None:
        import tiktoken

        known = {"gpt2", "char", "bpe", "hf", *tiktoken.list_encoding_names()}
        if self.name not in known:
            raise ConfigError(f"{key}.name: unknown tokenizer '{self.name}' (choose from {', '.join(sorted(known))})")


@dataclass
class NearDedupConfig:
    """MinHash LSH over word n-grams. A pair with Jaccard similarity J is caught with probability
    1 - (1 - J**rows)**bands: the defaults (3-grams, 36 x 4) catch 98% of pairs at J = 0.57 (10% of
    words changed at random), 0.4% at J = 0.1 and 0.02% at J = 0.05."""

    enabled: bool = True  # find near-duplicate clusters (the split keeps each cluster in one split)
    remove: bool = True  # keep only the first document of each cluster (false: clusters only steer the split)
    ngram: int = limit(3, at_least=1)  # words per shingle
    num_perm: int = limit(144, at_least=1)  # MinHash permutations (= bands x rows)
    bands: int = limit(36, at_least=1)
    rows: int = limit(4, at_least=1)
    seed: int = limit(1, at_least=0)  # MinHash seed

    def validate(self, key: str) -> None:
        if self.bands * self.rows != self.num_perm:
            raise ConfigError(f"{key}.num_perm must equal bands x rows ({self.bands} x {self.rows} = {self.bands * self.rows}), got {self.num_perm}")


@dataclass
class DedupConfig:
    exact: bool = True  # remove identical documents, within and across sources (the first copy in source order stays)
    near: NearDedupConfig = field(default_factory=NearDedupConfig)
    scope: Literal["all", "source"] = "all"  # find duplicates across all sources together, or within each source


@dataclass
class SplitConfig:
    val_fraction: float = limit(0.05, at_least=0.0, below=1.0)  # share of each source's documents held out for validation


@dataclass
class MixConfig:
    weights: dict[str, float] = field(default_factory=dict)  # relative share of train tokens per source
    train_tokens: int = limit(1_000_000, at_least=1)  # train-token budget of the mixture (EOS separators included)
    data_fraction: float = limit(1.0, above=0.0, at_most=1.0)  # share of each source's train tokens the mixture draws from (a seeded subset of documents); a mixture-search proxy at 1/4 of the budget uses 0.25, so each source repeats as often as in the full run

    def validate(self, key: str) -> None:
        for name, weight in self.weights.items():
            if weight < 0:
                raise ConfigError(f"{key}.weights.{name} must be >= 0, got {weight}")
        if not any(w > 0 for w in self.weights.values()):
            raise ConfigError(f"{key}.weights: at least one weight must be > 0")


@dataclass
class PackConfig:
    context_length: int = limit(256, at_least=2)  # tokens the model reads per block (a block stores one more: the last target)
    mode: PackMode = "concat"  # concat | pad | bestfit


@dataclass
class ExecutorConfig:
    """Where tokenize, dedup and scan run their tasks. The outputs are the same, byte for byte, however
    they run, so this section is no DVC param: switching never re-runs a stage (docs/scale.md)."""

    kind: Literal["local", "ray"] = "local"  # local (a process pool on this machine) | ray (a Ray cluster; pip install -e ".[ray]")
    workers: int = limit(0, at_least=0)  # tasks at once: 0 = this machine's cores (local) or one per CPU of the cluster (ray)
    address: str = "auto"  # ray: the cluster to join, as ray.init(address=...): auto (the one `ray start` runs here), host:port, or local (a fresh one for each stage)


@dataclass
class Params:
    """The whole `params.yaml`. Stages take their own section from it."""

    seed: int
    sources: dict[str, SourceConfig]
    tokenizer: TokenizerConfig
    split: SplitConfig
    mix: MixConfig
    pack: PackConfig
    snapshots: dict[str, SnapshotConfig] = field(default_factory=dict)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def validate(self, key: str) -> None:
        if not self.sources:
            raise ConfigError("sources: at least one source is required")
        for section, names in (("sources", self.sources), ("snapshots", self.snapshots)):
            for name in names:
                if not name.replace("_", "").replace("-", "").isalnum():
                    raise ConfigError(f"{section}.{name}: names may hold letters, digits, '_' and '-' only")
        for name in self.mix.weights:
            if name not in self.sources:
                raise ConfigError(f"mix.weights.{name}: no source named '{name}' (sources: {', '.join(self.sources)})")


def entry(name: str, entries: dict, section: str) -> str:
    """`name`, which must be an entry of the params section `section` (`entries`)."""
    if name not in entries:
        known = ", ".join(entries) or "none"
        raise PipelineError(f"{section}.{name}: no such entry in params.yaml ({section}: {known})")
    return name


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate `params.yaml`; raise ConfigError naming the file and key at fault."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        params = from_dict(Params, raw, "")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for key in TRACKED_PATHS:
        section, name = key.split(".")
        if name not in (raw.get(section) or {}):
            default = getattr(getattr(params, section), name)
            raise ConfigError(f"{path}: missing key '{key}' (dvc.yaml tracks the path it names; write it out, e.g. {key}: {default})")
    return params
