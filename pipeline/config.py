"""Typed params: one dataclass per `params.yaml` section, validated on load.

`load_params()` reads `params.yaml`, rejects unknown keys and bad values with a one-line
`ConfigError` naming the key, and returns a `Params`. Each stage then hands only its own
section to its core function.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from pipeline.errors import ConfigError, PipelineError

PARAMS_FILE = "params.yaml"
DEVICE_PATTERN = r"cpu|auto|cuda(:\d+)?"

# Model shapes by name (n_layer, n_head, n_embd); `model.preset` picks one, n_* override it.
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "cpu-tiny": dict(n_layer=2, n_head=2, n_embd=64),
    "cpu-small": dict(n_layer=4, n_head=4, n_embd=128),
    "cpu-base": dict(n_layer=6, n_head=6, n_embd=192),  # the default run: ~3.5M params with a 4k vocabulary
    "cpu-medium": dict(n_layer=6, n_head=6, n_embd=384),
}
# Llama-layout shapes (`model.arch: llama`): also key/value heads, the SwiGLU width and the RoPE base.
LLAMA_PRESETS: dict[str, dict[str, int]] = {
    "llama-cpu": dict(n_layer=6, n_head=6, n_kv_head=2, n_embd=192, intermediate_size=512, rope_theta=10000),
    "smollm2-135m": dict(n_layer=30, n_head=9, n_kv_head=3, n_embd=576, intermediate_size=1536, rope_theta=100000),
}
PRESETS = {"gpt2": MODEL_PRESETS, "llama": LLAMA_PRESETS}
# The GPT-2 layout's layer switches by recipe (`model.recipe`); a switch set in params overrides it.
# classic: GPT-2's own layers (2019). modern: the switches measured to help here (bench/README.md, "recipe").
RECIPES: dict[str, dict[str, Any]] = {
    "classic": dict(positions="learned", norm="layernorm", mlp="gelu", qk_norm=False, zero_init=False, logit_softcap=0.0, unet=False),
    "modern": dict(positions="rope", norm="layernorm", mlp="gelu", qk_norm=False, zero_init=False, logit_softcap=0.0, unet=False),
}


def limit(default: Any, *, at_least: float | None = None, above: float | None = None,
          below: float | None = None, at_most: float | None = None, pattern: str | None = None) -> Any:
    """A field with a default and a constraint that `from_dict` checks (None values are not checked)."""
    rules = {k: v for k, v in dict(at_least=at_least, above=above, below=below, at_most=at_most, pattern=pattern).items() if v is not None}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=rules)
    return field(default=default, metadata=rules)


def check_limits(obj: Any, key: str) -> None:
    """Raise a one-line ConfigError for the first field of `obj` outside its `limit`."""
    for f in dataclasses.fields(obj):
        value, rules = getattr(obj, f.name), f.metadata
        if value is None or not rules:
            continue
        broken = (
            ("at_least" in rules and value < rules["at_least"] and f">= {rules['at_least']}")
            or ("above" in rules and value <= rules["above"] and f"> {rules['above']}")
            or ("below" in rules and value >= rules["below"] and f"< {rules['below']}")
            or ("at_most" in rules and value > rules["at_most"] and f"<= {rules['at_most']}")
            or ("pattern" in rules and not re.fullmatch(rules["pattern"], value) and f"one of {rules['pattern']}")
        )
        if broken:
            raise ConfigError(f"{_join(key, f.name)} must be {broken}, got {value!r}")

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
    path: str = "models/README.md"  # hf: the model folder holding tokenizer.json (+ tokenizer_config.json); a DVC dep of vocab

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
class ModelConfig:
    """The model's shape. vocab_size and block_size come from the packed data's manifest."""

    arch: Literal["gpt2", "llama"] = "gpt2"  # gpt2 (model/gpt.py) | llama (model/llama.py: RMSNorm, RoPE, SwiGLU, GQA)
    preset: Optional[str] = "cpu-base"  # gpt2: gpt2 ... gpt2-xl, cpu-tiny, cpu-small, cpu-base, cpu-medium; llama: llama-cpu, smollm2-135m
    n_layer: Optional[int] = limit(None, at_least=1)  # overrides the preset when set
    n_head: Optional[int] = limit(None, at_least=1)  # overrides the preset when set
    n_embd: Optional[int] = limit(None, at_least=1)  # overrides the preset when set; a multiple of n_head
    n_kv_head: Optional[int] = limit(None, at_least=1)  # llama: key/value heads (divides n_head); overrides the preset
    intermediate_size: Optional[int] = limit(None, at_least=1)  # llama: SwiGLU hidden width; overrides the preset
    rope_theta: Optional[float] = limit(None, above=0.0)  # llama: RoPE base; overrides the preset
    dropout: float = limit(0.0, at_least=0.0, below=1.0)  # dropout on attention, residual and embedding outputs
    bias: bool = True  # gpt2: biases in Linear and LayerNorm layers (GPT-2 has them; Llama has none)
    tie_weights: bool = True  # share the token embedding with the output layer (GPT-2 does)
    doc_mask: bool = False  # no attention across document boundaries inside a packed block
    recipe: Literal["classic", "modern"] = "classic"  # gpt2: the layer switches below by name (classic: GPT-2's own; modern: what measured best here); llama: not used
    positions: Optional[Literal["learned", "rope"]] = None  # gpt2: learned position table | rope (rotary); null: the recipe's
    norm: Optional[Literal["layernorm", "rmsnorm"]] = None  # gpt2: layernorm | rmsnorm (scale only); null: the recipe's
    mlp: Optional[Literal["gelu", "relu2"]] = None  # gpt2: gelu | relu2 (ReLU squared); null: the recipe's
    qk_norm: Optional[bool] = None  # gpt2: RMS-normalise queries and keys per head; null: the recipe's
    zero_init: Optional[bool] = None  # gpt2: attention and MLP output projections start at zero; null: the recipe's
    logit_softcap: Optional[float] = limit(None, at_least=0.0)  # gpt2: cap * tanh(logits / cap) (0: off); null: the recipe's
    unet: Optional[bool] = None  # gpt2: U-net skips from the first half's blocks to the second half's; null: the recipe's

    def validate(self, key: str) -> None:
        presets = PRESETS[self.arch]
        if self.preset is not None and self.preset not in presets:
            raise ConfigError(f"{key}.preset: unknown {self.arch} preset '{self.preset}' (choose from {', '.join(presets)})")
        if self.arch == "gpt2":
            for name in ("n_kv_head", "intermediate_size", "rope_theta"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{key}.{name}: only for model.arch: llama")
        else:  # `recipe` names GPT-2-layout switches and does not apply; a switch set by hand is a mistake
            for name in RECIPES["classic"]:
                if getattr(self, name) is not None:
                    raise ConfigError(f"{key}.{name}: only for model.arch: gpt2 (the Llama layout is Hugging Face's, as it is)")
        shape = self.shape()
        missing = [name for name, value in shape.items() if value is None]
        if missing:
            raise ConfigError(f"{key}.{missing[0]}: set {key}.preset or all of {', '.join(shape)}")
        if shape["n_embd"] % shape["n_head"]:
            raise ConfigError(f"{key}.n_embd ({shape['n_embd']}) must be a multiple of {key}.n_head ({shape['n_head']})")
        if self.arch == "llama" and shape["n_head"] % shape["n_kv_head"]:
            raise ConfigError(f"{key}.n_head ({shape['n_head']}) must be a multiple of {key}.n_kv_head ({shape['n_kv_head']})")

    def shape(self) -> dict[str, Optional[int]]:
        """The preset's shape (n_layer, n_head, n_embd; for llama also n_kv_head, intermediate_size,
        rope_theta), overridden by the fields that are set."""
        names = next(iter(PRESETS[self.arch].values())).keys()
        shape = dict(PRESETS[self.arch].get(self.preset or "", dict.fromkeys(names)))
        shape.update({name: getattr(self, name) for name in shape if getattr(self, name) is not None})
        return shape

    def layers(self) -> dict[str, Any]:
        """The GPT-2 layout's layer switches: the recipe's, overridden by those set (none for llama)."""
        if self.arch != "gpt2":
            return {}
        layers = dict(RECIPES[self.recipe])
        layers.update({name: getattr(self, name) for name in layers if getattr(self, name) is not None})
        return layers


@dataclass
class TrainConfig:
    device: str = limit("cpu", pattern=DEVICE_PATTERN)  # cpu | cuda | cuda:N | auto (cuda when available)
    init_from: Optional[str] = None  # a tinyGPT checkpoint or a Hugging Face folder (GPT-2, Llama, Qwen2, Mistral)
    batch_size: int = limit(12, at_least=1)  # blocks per micro-batch (per process under DDP)
    grad_accum: int = limit(1, at_least=1)  # micro-batches per optimizer step
    max_iters: int = limit(2000, at_least=1)  # optimizer steps
    optimizer: Literal["adamw", "muon"] = "adamw"  # adamw | muon (Muon for the hidden matrices, AdamW at `lr` for embeddings, output layer, gains, biases)
    lr: float = limit(1e-3, above=0.0)  # peak learning rate (of AdamW's parameters)
    min_lr: float = limit(1e-4, at_least=0.0)  # cosine decays to this; at most lr (Muon's LR decays by the same factor)
    warmup_iters: int = limit(100, at_least=0)  # linear warmup steps
    weight_decay: float = limit(0.1, at_least=0.0)  # AdamW decay on 2-D weights only
    beta1: float = limit(0.9, at_least=0.0, below=1.0)
    beta2: float = limit(0.99, at_least=0.0, below=1.0)
    muon_lr: float = limit(0.02, above=0.0)  # muon: peak learning rate of the hidden matrices
    muon_momentum: float = limit(0.95, at_least=0.0, below=1.0)  # muon: Nesterov momentum
    muon_momentum_warmup: int = limit(0, at_least=0)  # muon: steps over which momentum rises from 0.85 to muon_momentum (0: none)
    muon_weight_decay: float = limit(0.1, at_least=0.0)  # muon: decoupled weight decay of the hidden matrices (each step: w -= muon_lr x this x w)
    grad_clip: float = limit(1.0, at_least=0.0)  # max global grad norm; 0 disables
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU | fp32 | bf16 (autocast on either)
    doc_mask_kernel: Literal["auto", "flex", "dense"] = "auto"  # document masking: auto (flex on CUDA, dense on CPU) | flex | dense
    eval_interval: int = limit(250, at_least=0)  # steps between val evaluations (0: only at the end)
    eval_blocks: int = limit(32, at_least=0)  # val blocks per source at each periodic evaluation, spread over it (0: all)
    checkpoint_interval: int = limit(250, at_least=0)  # steps between checkpoints (0: only at the end)
    compile: bool = False  # torch.compile the model
    threads: int = limit(0, at_least=0)  # torch CPU threads (0: all cores, shared among the processes of a node)
    log_interval: int = limit(10, at_least=1)  # steps between train-loss points in W&B and DVCLive
    peak_flops: float = 0.0  # per-device peak FLOP/s for MFU; 0: auto (bf16 peak of known GPUs, else a quick matmul benchmark); < 0: no MFU

    def validate(self, key: str) -> None:
        if self.min_lr > self.lr:
            raise ConfigError(f"{key}.min_lr ({self.min_lr}) must be at most {key}.lr ({self.lr})")
        if self.doc_mask_kernel == "flex" and self.device == "cpu":
            raise ConfigError(f"{key}.doc_mask_kernel: flex attention cannot train on cpu (torch has no CPU backward for it); use auto or dense")


@dataclass
class EvaluateConfig:
    max_blocks: int = limit(0, at_least=0)  # val blocks per source to score, spread over it (0: all)
    batch_size: int = limit(16, at_least=1)
    device: str = limit("auto", pattern=DEVICE_PATTERN)  # cpu | cuda | cuda:N | auto (cuda when available)


@dataclass
class SampleConfig:
    prompts: list[str] = limit(["\n"])  # one group of samples per prompt
    num_samples: int = limit(2, at_least=1)  # samples per prompt
    max_new_tokens: int = limit(200, at_least=0)
    temperature: float = limit(0.8, at_least=0.0)  # 0: greedy
    top_k: Optional[int] = limit(200, at_least=1)  # keep the k likeliest tokens (null: all)
    top_p: Optional[float] = limit(None, above=0.0, at_most=1.0)  # keep the smallest set reaching p (null: all)
    device: str = limit("auto", pattern=DEVICE_PATTERN)  # cpu | cuda | cuda:N | auto (cuda when available)

    def validate(self, key: str) -> None:
        if not self.prompts:
            raise ConfigError(f"{key}.prompts: give at least one prompt")


@dataclass
class LoraConfig:
    """LoRA adapters (`finetune.lora`): W x + B A x * alpha / rank on the target Linear layers; only A and B train."""

    rank: int = limit(8, at_least=1)  # inner width r of each adapter
    alpha: float = limit(16.0, above=0.0)  # the adapters' output is scaled by alpha / rank
    dropout: float = limit(0.0, at_least=0.0, below=1.0)  # dropout on the adapters' input (training only)
    targets: list[str] = limit(["c_attn", "c_proj", "c_fc", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])  # Linear layers by name suffix (gpt2: c_attn, c_proj, c_fc; llama: q/k/v/o_proj, gate/up/down_proj; `attn.c_proj` narrows)

    def validate(self, key: str) -> None:
        if not self.targets:
            raise ConfigError(f"{key}.targets: name at least one Linear layer (e.g. c_attn or q_proj)")
        for target in self.targets:
            if not re.fullmatch(r"\w+(\.\w+)*", target):
                raise ConfigError(f"{key}.targets: '{target}' is not a layer name (suffix) such as c_attn or attn.c_proj")


@dataclass
class FinetuneConfig:
    """Instruction fine-tuning (`python -m model.finetune`): loss on the assistant replies only."""

    data: str = "data/instructions.jsonl"  # records (.json list or .jsonl): instruction, optional input, output; or messages
    init_from: str = "data/model"  # a tinyGPT checkpoint folder, a LoRA adapter folder or a Hugging Face folder
    template: Literal["tinygpt-instruct-v1", "alpaca", "llama2", "llama3", "chatml", "model"] = "tinygpt-instruct-v1"  # prompt format; model: init_from's own chat_template (tokenizer_config.json)
    lora: Optional[LoraConfig] = None  # LoRA adapters on a frozen model ({} for the defaults); null: train every weight
    vocab: str = "data/vocab"  # tokenizer folder, used when init_from has no tokenizer/ (Hugging Face folders)
    epochs: int = limit(2, at_least=1)  # passes over the records
    batch_size: int = limit(4, at_least=1)  # records per optimizer step (padded to the longest)
    lr: float = limit(3e-4, above=0.0)  # peak learning rate
    min_lr: float = limit(3e-5, at_least=0.0)  # cosine decays to this at the last step; at most lr
    warmup_iters: int = limit(2, at_least=0)  # linear warmup steps
    weight_decay: float = limit(0.1, at_least=0.0)  # AdamW decay on 2-D weights only
    beta1: float = limit(0.9, at_least=0.0, below=1.0)
    beta2: float = limit(0.99, at_least=0.0, below=1.0)
    grad_clip: float = limit(1.0, at_least=0.0)  # max global grad norm; 0 disables
    dropout: Optional[float] = limit(None, at_least=0.0, below=1.0)  # override the checkpoint's dropout (None: keep it)
    device: str = limit("auto", pattern=DEVICE_PATTERN)  # cpu | cuda | cuda:N | auto (cuda when available)

    def validate(self, key: str) -> None:
        if self.min_lr > self.lr:
            raise ConfigError(f"{key}.min_lr ({self.min_lr}) must be at most {key}.lr ({self.lr})")


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
    dedup: DedupConfig = field(default_factory=DedupConfig)
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
        check_limits(obj, key)
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
