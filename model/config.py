"""The model side's params: the network's shape (`model`), training, evaluation, sampling,
fine-tuning and logging, one dataclass per `params.yaml` section (typed and checked by
pipeline/typed.py; pipeline/config.py assembles the whole file)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Optional

from pipeline.errors import ConfigError
from pipeline.paths import NO_FOLDER
from pipeline.typed import limit

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
    init_from: str = NO_FOLDER  # a folder to start from: ours, a Hugging Face one (GPT-2, Llama, Qwen2, Mistral) or a LoRA adapter folder holding its base; the placeholder models/README.md: random weights
    batch_size: int = limit(12, at_least=1)  # blocks per micro-batch (per process under DDP)
    grad_accum: int = limit(1, at_least=1)  # micro-batches per optimizer step
    max_iters: int = limit(2000, at_least=1)  # optimizer steps
    optimizer: Literal["adamw", "muon"] = "adamw"  # adamw | muon (Muon for the hidden matrices, AdamW at `lr` for embeddings, output layer, gains, biases)
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: ddp (a full copy per process) | fsdp (FSDP2: weights, gradients, optimizer state sharded)
    lr: float = limit(1e-3, above=0.0)  # peak learning rate (of AdamW's parameters)
    min_lr: float = limit(1e-4, at_least=0.0)  # cosine decays to this; at most lr (Muon's LR decays by the same factor)
    warmup_iters: int = limit(100, at_least=0)  # linear warmup steps
    weight_decay: float = limit(0.1, at_least=0.0)  # AdamW decay on 2-D weights only
    beta1: float = limit(0.9, at_least=0.0, below=1.0)  # AdamW's first-moment decay
    beta2: float = limit(0.99, at_least=0.0, below=1.0)  # AdamW's second-moment decay
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

    @property
    def start_folder(self) -> Optional[str]:
        """The folder training starts from; None: random weights (`init_from` is the placeholder)."""
        return None if self.init_from == NO_FOLDER else self.init_from

    def validate(self, key: str) -> None:
        if self.min_lr > self.lr:
            raise ConfigError(f"{key}.min_lr ({self.min_lr}) must be at most {key}.lr ({self.lr})")
        if self.parallel == "fsdp" and self.optimizer == "muon":
            raise ConfigError(f"{key}.optimizer: muon does not run under {key}.parallel: fsdp (its orthogonalisation needs whole "
                              "matrices, the shards are row slices); use adamw")
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
    init_from: str = "data/model"  # a tinyGPT checkpoint folder, a LoRA adapter folder holding its base, or a Hugging Face folder
    template: Literal["tinygpt-instruct-v1", "alpaca", "llama2", "llama3", "chatml", "model"] = "tinygpt-instruct-v1"  # prompt format; model: init_from's own chat template (chat_template.jinja, or chat_template in tokenizer_config.json)
    lora: Optional[LoraConfig] = None  # LoRA adapters on a frozen model ({} for the defaults); null: train every weight
    vocab: str = "data/vocab"  # tokenizer folder, used when init_from has no tokenizer/ (Hugging Face folders)
    epochs: int = limit(2, at_least=1)  # passes over the records
    batch_size: int = limit(4, at_least=1)  # records per optimizer step (padded to the longest)
    lr: float = limit(3e-4, above=0.0)  # peak learning rate
    min_lr: float = limit(3e-5, at_least=0.0)  # cosine decays to this at the last step; at most lr
    warmup_iters: int = limit(2, at_least=0)  # linear warmup steps
    weight_decay: float = limit(0.1, at_least=0.0)  # AdamW decay on 2-D weights only
    beta1: float = limit(0.9, at_least=0.0, below=1.0)  # AdamW's first-moment decay
    beta2: float = limit(0.99, at_least=0.0, below=1.0)  # AdamW's second-moment decay
    grad_clip: float = limit(1.0, at_least=0.0)  # max global grad norm; 0 disables
    dropout: Optional[float] = limit(None, at_least=0.0, below=1.0)  # override the checkpoint's dropout (None: keep it)
    device: str = limit("auto", pattern=DEVICE_PATTERN)  # cpu | cuda | cuda:N | auto (cuda when available)

    def validate(self, key: str) -> None:
        if self.min_lr > self.lr:
            raise ConfigError(f"{key}.min_lr ({self.min_lr}) must be at most {key}.lr ({self.lr})")


@dataclass
class WandbConfig:
    """Weights & Biases logging of train, finetune and mixsearch runs (DVCLive logs the same metrics)."""

    mode: Literal["offline", "online", "disabled"] = "offline"  # offline (sync later with `wandb sync`) | online | disabled
    project: str = "tinygpt"  # the W&B project runs go to


