"""Typed params: one dataclass per `params.yaml` section, validated on load.

`load_params()` reads `params.yaml`, rejects unknown keys and bad values with a one-line
`ConfigError` naming the key, and returns a `Params`. Each stage then hands only its own
section to its core function.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from pipeline.errors import ConfigError, PipelineError

PARAMS_FILE = "params.yaml"

SourceFormat = Literal["text", "jsonl", "parquet", "hf"]
SnapshotFormat = Literal["hf", "python-docs", "python-stdlib"]
PackMode = Literal["concat", "pad", "bestfit"]


@dataclass
class SnapshotConfig:
    """Data copied into the project (`data/raw/<name>/`, Parquet) so that DVC versions it: a Hugging
    Face hub dataset at a pinned revision, or text that ships with Python."""

    format: SnapshotFormat  # hf | python-docs (English docs prose) | python-stdlib (standard library code)
    path: Optional[str] = None  # hf: the hub dataset id, e.g. HuggingFaceFW/fineweb-edu
    revision: Optional[str] = None  # hf: pinned revision (commit sha or tag); required
    subset: Optional[str] = None  # hf: configuration name, if the dataset has several
    hf_split: str = "train"  # hf: which split of the dataset to read
    text_field: str = "text"  # hf: the field holding the text
    max_docs: Optional[int] = None  # hf: stop after this many documents (a sample of a large dataset)

    def validate(self, key: str) -> None:
        if self.format == "hf" and not (self.path and self.revision):
            raise ConfigError(f"{key}: format 'hf' needs path (the dataset id) and a pinned revision")
        if self.format != "hf" and (self.path or self.revision):
            raise ConfigError(f"{key}: path and revision are for format 'hf' only")
        if self.max_docs is not None and self.max_docs < 1:
            raise ConfigError(f"{key}.max_docs must be >= 1, got {self.max_docs}")


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
    name: str = "gpt2"  # gpt2 (offline, from the vocab stage), any tiktoken encoding name, or char

    def validate(self, key: str) -> None:
        import tiktoken

        known = {"gpt2", "char", *tiktoken.list_encoding_names()}
        if self.name not in known:
            raise ConfigError(f"{key}.name: unknown tokenizer '{self.name}' (choose from {', '.join(sorted(known))})")


@dataclass
class SplitConfig:
    val_fraction: float = 0.05  # share of each source's documents held out for validation, in [0, 1)

    def validate(self, key: str) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"{key}.val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class MixConfig:
    weights: dict[str, float] = field(default_factory=dict)  # relative share of train tokens per source
    train_tokens: int = 1_000_000  # train-token budget of the mixture (EOS separators included)

    def validate(self, key: str) -> None:
        for name, weight in self.weights.items():
            if weight < 0:
                raise ConfigError(f"{key}.weights.{name} must be >= 0, got {weight}")
        if not any(w > 0 for w in self.weights.values()):
            raise ConfigError(f"{key}.weights: at least one weight must be > 0")
        if self.train_tokens <= 0:
            raise ConfigError(f"{key}.train_tokens must be > 0, got {self.train_tokens}")


@dataclass
class PackConfig:
    context_length: int = 256  # tokens the model reads per block (a block stores one more: the last target)
    mode: PackMode = "concat"  # concat | pad | bestfit

    def validate(self, key: str) -> None:
        if self.context_length < 2:
            raise ConfigError(f"{key}.context_length must be >= 2, got {self.context_length}")


@dataclass
class ModelConfig:
    """GPT-2 shape. vocab_size and block_size come from the packed data's manifest."""

    preset: Optional[str] = "cpu-small"  # gpt2 | gpt2-medium | gpt2-large | gpt2-xl | cpu-tiny | cpu-small | cpu-medium
    n_layer: Optional[int] = None  # overrides the preset when set
    n_head: Optional[int] = None  # overrides the preset when set
    n_embd: Optional[int] = None  # overrides the preset when set
    dropout: float = 0.0  # dropout on attention, residual and embedding outputs
    bias: bool = True  # biases in Linear and LayerNorm layers (GPT-2 has them)
    tie_weights: bool = True  # share the token embedding with the output layer (GPT-2 does)
    doc_mask: bool = False  # no attention across document boundaries inside a packed block

    def validate(self, key: str) -> None:
        if self.preset is None and None in (self.n_layer, self.n_head, self.n_embd):
            raise ConfigError(f"{key}: set model.preset or all of n_layer, n_head, n_embd")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{key}.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class TrainConfig:
    device: str = "cpu"  # cpu | cuda | cuda:N | auto (cuda when available)
    init_from: Optional[str] = None  # a Hugging Face GPT-2 folder or a tinyGPT checkpoint folder
    batch_size: int = 12  # blocks per micro-batch (per process under DDP)
    grad_accum: int = 1  # micro-batches per optimizer step
    max_iters: int = 2000  # optimizer steps
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # cosine decays to this
    warmup_iters: int = 100  # linear warmup steps
    weight_decay: float = 0.1  # AdamW decay on 2-D weights only
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    eval_interval: int = 250  # steps between val evaluations (0: only at the end)
    eval_blocks: int = 32  # val blocks per source at each periodic evaluation
    checkpoint_interval: int = 250  # steps between checkpoints (0: only at the end)
    compile: bool = False  # torch.compile the model
    threads: int = 0  # torch CPU threads (0: all cores, shared among the processes of a node)
    log_interval: int = 10  # steps between train-loss points in W&B and metrics/plots
    peak_flops: float = 0.0  # per-device peak FLOP/s for MFU; 0: auto (bf16 peak of known GPUs, else a quick matmul benchmark); < 0: no MFU


@dataclass
class EvaluateConfig:
    max_blocks: int = 0  # val blocks per source to score (0: all)
    batch_size: int = 16
    device: str = "auto"  # cpu | cuda | cuda:N | auto (cuda when available)


@dataclass
class SampleConfig:
    prompts: list[str] = field(default_factory=lambda: ["\n"])  # one sample per prompt (and per num_samples)
    num_samples: int = 2  # samples per prompt
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: Optional[int] = 200
    top_p: Optional[float] = None
    device: str = "auto"  # cpu | cuda | cuda:N | auto (cuda when available)


@dataclass
class FinetuneConfig:
    """Instruction fine-tuning (`python -m model.finetune`): Alpaca-format records, loss on responses only."""

    data: str = "data/instructions.jsonl"  # records (.json list or .jsonl): instruction, optional input, output
    init_from: str = "data/model"  # a tinyGPT checkpoint folder or a Hugging Face GPT-2 folder
    vocab: str = "data/vocab"  # tokenizer folder, used when init_from has no tokenizer/ (Hugging Face folders)
    epochs: int = 2  # passes over the records
    batch_size: int = 4  # records per optimizer step (padded to the longest)
    lr: float = 3e-4  # peak learning rate
    min_lr: float = 3e-5  # cosine decays to this at the last step
    warmup_iters: int = 2  # linear warmup steps
    weight_decay: float = 0.1  # AdamW decay on 2-D weights only
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    dropout: Optional[float] = None  # override the checkpoint's dropout (None: keep it)
    device: str = "auto"  # cpu | cuda | cuda:N | auto (cuda when available)

    def validate(self, key: str) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_iters < 0:
            raise ConfigError(f"{key}.warmup_iters must be >= 0, got {self.warmup_iters}")
        if not 0.0 < self.lr or not 0.0 <= self.min_lr <= self.lr:
            raise ConfigError(f"{key}.lr must be > 0 and {key}.min_lr in [0, lr]; got {self.lr}, {self.min_lr}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{key}.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class WandbConfig:
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "tinygpt"


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
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
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


def entry_argument(argv: list[str], entries: dict, section: str, stage: str) -> str:
    """The one `<name>` argument of a per-entry stage (`python -m pipeline.<stage> <name>`), which
    must name an entry of the params section `section` (`entries`)."""
    if len(argv) != 2:
        raise PipelineError(f"usage: python -m pipeline.{stage} <name of an entry of {section}>")
    if argv[1] not in entries:
        raise PipelineError(f"{section}.{argv[1]}: no such entry in params.yaml")
    return argv[1]


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
        return from_dict(Params, raw, "")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def from_dict(cls: Any, value: Any, key: str) -> Any:
    """Convert plain YAML data into `cls` (a dataclass or typing annotation), checking as it goes."""
    label = key or "top level"
    if dataclasses.is_dataclass(cls):
        if not isinstance(value, dict):
            raise ConfigError(f"{label} must be a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ConfigError(f"unknown key '{_join(key, unknown[0])}'")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = from_dict(hints[name], value[name], _join(key, name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing key '{_join(key, name)}'")
        obj = cls(**kwargs)
        if hasattr(obj, "validate"):
            obj.validate(key)
        return obj
    origin = typing.get_origin(cls)
    args = typing.get_args(cls)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{label} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return from_dict(inner, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{label} must be a list, got {type(value).__name__}")
        return [from_dict(args[0], v, f"{label}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{label} must be a mapping, got {type(value).__name__}")
        return {str(k): from_dict(args[1], v, _join(key, str(k))) for k, v in value.items()}
    if cls is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{label} must be true or false, got {value!r}")
        return value
    if cls is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{label} must be an integer, got {value!r}")
        return value
    if cls is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{label} must be a number, got {value!r}")
        return float(value)
    if cls is str:
        if not isinstance(value, str):
            raise ConfigError(f"{label} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {cls!r} at {label}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
