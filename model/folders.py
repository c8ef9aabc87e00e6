"""Model folders on disk, in one place: every file name, reading and writing our format, Hugging
Face's and LoRA adapters, and `load_any`, which loads whatever a folder holds.

- **ours**: `model.safetensors` (our parameter names; `lm_head.weight` left out when tied) and
  `model_config.json` ("arch" and the network config's fields). A trained model adds `tokenizer/`
  (a copy of the vocab folder) and `train_manifest.json`; a fine-tuned one `template.json`.
- **Hugging Face**: `config.json` and `model.safetensors` (or `pytorch_model.bin`, or a sharded
  `*.index.json` of either), `generation_config.json`, and the tokenizer files of
  `pipeline.tokenizer` (`tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`). GPT-2
  (its Conv1D weights transposed to nn.Linear's layout), Llama, Qwen2 and Mistral.
- **LoRA adapters**: `adapter.safetensors` (the A and B matrices only) and `adapter_config.json`
  (the base model folder and the settings); loading merges them into the base.

The writers (`write_ours`, `write_hf`, `write_adapter`) write into a folder the caller opened with
`pipeline.io.atomic_dir`, so a whole output appears at once or not at all. Nothing is ever
unpickled beyond plain tensors, and a truncated or corrupt weights file is a one-line error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from model.decoder import Decoder
from model.gpt import GPT, GPT2_LAYERS, GPTConfig
from model.llama import Llama, LlamaConfig, check_llama3_scaling
from pipeline.errors import PipelineError
from pipeline.io import read_json, write_json
from pipeline.tokenizer import GENERATION_CONFIG_FILE, SPEC_FILE

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
TOKENIZER_DIR = "tokenizer"
TRAIN_MANIFEST_FILE = "train_manifest.json"  # the train data's manifest, beside a trained model
TEMPLATE_FILE = "template.json"  # the prompt template a model was fine-tuned with
HF_CONFIG_FILE = "config.json"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"  # the shards of a large model's model-*.safetensors
HF_WEIGHT_FILES = (WEIGHTS_FILE, SAFETENSORS_INDEX_FILE, "pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER_FILE = "adapter.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_FORMAT = "tinygpt-lora-v1"
NETWORKS = {GPT.ARCH: GPT, Llama.ARCH: Llama}


# ---- tensors -----------------------------------------------------------------------------------


def read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a truncated or corrupt file is a one-line error naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as exc:  # safetensors raises its own error types (and OSError) on bad files
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise PipelineError(f"{file}: not a readable safetensors file, truncated or corrupt ({reason[:120]})") from None


def write_safetensors(tensors: dict[str, torch.Tensor], file: Path) -> None:
    """Write tensors with the usual file mode (safetensors itself creates the file private, 0600)."""
    from safetensors.torch import save_file

    save_file(tensors, str(file), metadata={"format": "pt"})
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(file, 0o666 & ~mask)


def model_tensors(model: Decoder) -> dict[str, torch.Tensor]:
    """The state to save: detached, contiguous, on the CPU, one copy of tied weights."""
    state = model.state_dict()
    if model.config.tie_weights:
        state.pop("lm_head.weight")
    return {name: t.detach().cpu().contiguous() for name, t in state.items()}


def build(network: type, config, tensors: dict, source: str, map_location) -> Decoder:
    """A `network` with `config` and the given state, names and shapes checked first (one-line errors)."""
    with torch.device("meta"):
        model = network(config)  # no memory, no random init: every tensor comes from the checkpoint
    expected = model.state_dict()
    if config.tie_weights:
        expected.pop("lm_head.weight")
        tensors.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        what = f"missing tensor '{missing[0]}'" if missing else f"unexpected tensor '{unexpected[0]}'"
        raise PipelineError(f"{source}: {what} for a model with {config.n_layer} layers (checkpoint does not match its config)")
    for name, want in expected.items():
        if tuple(tensors[name].shape) != tuple(want.shape):
            raise PipelineError(f"{source}: tensor '{name}' has shape {tuple(tensors[name].shape)}, the config implies {tuple(want.shape)}")
    state = {name: t.to(device=map_location, dtype=torch.float32) for name, t in tensors.items()}
    if config.tie_weights:
        state["lm_head.weight"] = state[network.EMBEDDING]
    model.load_state_dict(state, assign=True)
    if config.tie_weights:
        model.lm_head.weight = model.get_parameter(network.EMBEDDING)
    for name, buffer in model.fresh_buffers(map_location).items():
        setattr(model, name, buffer)
    return model


# ---- ours --------------------------------------------------------------------------------------


def write_ours(model: Decoder, folder: Path, tokenizer_dir: Optional[Path] = None) -> None:
    """model.safetensors + model_config.json (+ a copy of `tokenizer_dir` as `tokenizer/`) into `folder`."""
    folder = Path(folder)
    write_safetensors(model_tensors(model), folder / WEIGHTS_FILE)
    write_json(folder / CONFIG_FILE, {"arch": model.ARCH, **dataclasses.asdict(model.config)})
    if tokenizer_dir is not None:
        shutil.copytree(tokenizer_dir, folder / TOKENIZER_DIR)


def read_ours(path: Path, map_location="cpu", dropout: Optional[float] = None) -> Decoder:
    """Load a folder `write_ours` wrote (float32 weights). dropout: override the saved value."""
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise PipelineError(f"{path / name}: not found (not a tinyGPT checkpoint folder)")
    data = read_config(path / CONFIG_FILE)
    arch = data.pop("arch", GPT.ARCH)  # checkpoints from before the Llama layout have no "arch"
    if arch not in NETWORKS:
        raise PipelineError(f"{path / CONFIG_FILE}: unknown arch '{arch}' (known: {', '.join(NETWORKS)})")
    if dropout is not None:
        data["dropout"] = dropout
    network = NETWORKS[arch]
    config = config_from_dict(network.CONFIG, data, str(path / CONFIG_FILE))
    return build(network, config, read_safetensors(path / WEIGHTS_FILE), str(path / WEIGHTS_FILE), map_location)


def read_config(file: Path) -> dict:
    """A JSON object file (model_config.json, config.json, ...); one-line errors when it is not one."""
    data = read_json(file)
    if not isinstance(data, dict):
        raise PipelineError(f"{file}: must hold a JSON object, got {type(data).__name__}")
    return data


def config_from_dict(config_class: type, data: dict, source: str):
    """A network config from the dict of model_config.json; unknown or missing keys name `source`."""
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(config_class)})
    if unknown:
        raise PipelineError(f"{source}: unknown key '{unknown[0]}'")
    try:
        return config_class(**data)
    except TypeError as exc:
        raise PipelineError(f"{source}: {exc}") from None


def tokenizer_folder(checkpoint: Path, fallback: Path, hint: str) -> Path:
    """The checkpoint's own `tokenizer/` folder, else `fallback` (Hugging Face folders have none of
    ours); `hint` tells how to choose another fallback, for the error."""
    if (checkpoint / TOKENIZER_DIR / SPEC_FILE).is_file():
        return checkpoint / TOKENIZER_DIR
    if not (fallback / SPEC_FILE).is_file():
        raise PipelineError(f"{checkpoint} has no {TOKENIZER_DIR}/ folder and {fallback / SPEC_FILE} is missing ({hint})")
    return fallback


# ---- Hugging Face: GPT-2 -------------------------------------------------------------------------

GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GPT2_IGNORED = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers in older HF checkpoints
GPT2_EOS_ID = 50256


def gpt2_blocker(config: GPTConfig) -> Optional[str]:
    """The first switch Hugging Face's GPT2LMHeadModel cannot represent, as `model.<key>: <value>`
    (None: exportable). Zero-initialised projections are only a starting point, so they export."""
    for name in ("positions", "norm", "mlp", "qk_norm", "logit_softcap", "unet"):
        value = getattr(config, name)
        if value != GPT2_LAYERS[name]:
            return f"model.{name}: {str(value).lower()}"
    if not config.bias:
        return "model.bias: false (Hugging Face GPT-2 always has biases)"
    return None


def gpt2_hf_config(c: GPTConfig, eos_id: Optional[int]) -> dict:
    """config.json of a GPT2LMHeadModel; eos_id is also bos (default: GPT-2's 50256 when the vocabulary has it)."""
    if eos_id is None and c.vocab_size > GPT2_EOS_ID:
        eos_id = GPT2_EOS_ID
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size, "n_positions": c.block_size,
        "n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd, "n_inner": None, "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5, "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
        "initializer_range": 0.02, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": c.tie_weights, "bos_token_id": eos_id, "eos_token_id": eos_id,
    }


def gpt2_config(hf: dict, source: str, dropout: Optional[float]) -> GPTConfig:
    """Our GPTConfig from a GPT-2 config.json; what GPT-2 variants we do not implement is a one-line error."""
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise PipelineError(f"{source}: activation_function '{hf['activation_function']}' is not supported (gelu_new)")
    if hf.get("n_inner") not in (None, 4 * hf.get("n_embd", 768)):
        raise PipelineError(f"{source}: n_inner {hf['n_inner']} is not supported (only 4 * n_embd)")
    if abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        raise PipelineError(f"{source}: layer_norm_epsilon {hf['layer_norm_epsilon']} is not supported (only 1e-5)")
    if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
        raise PipelineError(f"{source}: non-standard attention scaling is not supported")
    return GPTConfig(
        vocab_size=hf.get("vocab_size", 50257), block_size=hf.get("n_positions", 1024), n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12), n_embd=hf.get("n_embd", 768), bias=True, tie_weights=hf.get("tie_word_embeddings", True),
        dropout=hf.get("resid_pdrop", 0.1) if dropout is None else dropout,
    )


def gpt2_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF GPT-2 tensors under our names and layout: Conv1D weights transposed, mask buffers dropped."""
    ours = {}
    for name, t in tensors.items():
        if name.endswith(GPT2_IGNORED):
            continue
        if name != "lm_head.weight" and not name.startswith("transformer."):
            name = "transformer." + name  # the original OpenAI-converted checkpoints have no prefix
        ours[name] = t.t() if name.endswith(GPT2_CONV1D) else t
    return ours


# ---- Hugging Face: the Llama layout ---------------------------------------------------------------

LLAMA_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "num_experts_per_tok", "moe_intermediate_size")
LLAMA_IGNORED = ("rotary_emb.inv_freq",)  # a buffer some older HF checkpoints saved; we compute it


def llama_config(hf: dict, source: str, dropout: Optional[float]) -> LlamaConfig:
    """Our LlamaConfig from a Llama/Qwen2/Mistral config.json; anything we do not implement is a one-line error."""
    arch = (hf.get("architectures") or [LLAMA_ARCHITECTURES.get(hf.get("model_type"), hf.get("model_type"))])[0]
    if arch not in LLAMA_ARCHITECTURES.values():
        raise PipelineError(f"{source}: architectures '{arch}' is not supported ({', '.join(LLAMA_ARCHITECTURES.values())})")
    for key in MOE_KEYS:
        if hf.get(key):
            raise PipelineError(f"{source}: {key} is set: mixture-of-experts models are not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise PipelineError(f"{source}: hidden_act '{hf['hidden_act']}' is not supported (silu)")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise PipelineError(f"{source}: {key} is not supported (the only biases are Qwen2's q/k/v)")
    need = {key: _hf_key(hf, key, source) for key in ("vocab_size", "hidden_size", "intermediate_size",
                                                      "num_hidden_layers", "num_attention_heads")}
    rope_theta, rope_scaling = _hf_rope(hf, source)
    try:
        return LlamaConfig(
            vocab_size=need["vocab_size"], block_size=_hf_block_size(hf, source), n_layer=need["num_hidden_layers"],
            n_head=need["num_attention_heads"], n_kv_head=hf.get("num_key_value_heads") or need["num_attention_heads"],
            n_embd=need["hidden_size"], intermediate_size=need["intermediate_size"], head_dim=hf.get("head_dim"),
            rope_theta=rope_theta, rope_scaling=rope_scaling, rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_weights=bool(hf.get("tie_word_embeddings", False)), qkv_bias=arch == LLAMA_ARCHITECTURES["qwen2"],
            dropout=hf.get("attention_dropout", 0.0) if dropout is None else dropout,
            bos_id=_first(hf.get("bos_token_id")), eos_id=_first(hf.get("eos_token_id")),
        )
    except PipelineError as exc:
        raise PipelineError(f"{source}: {exc}") from None


def llama_hf_config(c: LlamaConfig, eos_id: Optional[int]) -> dict:
    """config.json of a LlamaForCausalLM (Qwen2ForCausalLM with q/k/v biases). Rope settings in both
    spellings: transformers 5's `rope_parameters`, and `rope_theta` + `rope_scaling` for older readers."""
    model_type = "qwen2" if c.qkv_bias else "llama"
    scaling = {"rope_type": "llama3", **c.rope_scaling} if c.rope_scaling else None
    hf = {
        "architectures": [LLAMA_ARCHITECTURES[model_type]], "model_type": model_type, "vocab_size": c.vocab_size,
        "max_position_embeddings": c.block_size, "hidden_size": c.n_embd, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head,
        "head_dim": c.head_dim, "hidden_act": "silu", "rms_norm_eps": c.rms_norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta, **(scaling or {})},
        "rope_theta": c.rope_theta, "rope_scaling": scaling, "attention_dropout": c.dropout,
        "tie_word_embeddings": c.tie_weights, "bos_token_id": c.bos_id, "eos_token_id": c.eos_id if eos_id is None else eos_id,
        "initializer_range": 0.02, "use_cache": True,
    }
    hf.update(dict(use_sliding_window=False, sliding_window=None) if c.qkv_bias else dict(attention_bias=False, mlp_bias=False))
    return hf


def _first(token_id):
    """A token id, or the first of a list of them (Llama 3.1 lists several EOS ids)."""
    return token_id[0] if isinstance(token_id, list) and token_id else token_id


def _hf_key(hf: dict, key: str, source: str):
    if key not in hf:
        raise PipelineError(f"{source}: '{key}' is missing")
    return hf[key]


def _hf_rope(hf: dict, source: str) -> tuple[float, Optional[dict]]:
    """rope_theta and our rope_scaling from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling`."""
    key = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    rope = hf.get(key) or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise PipelineError(f"{source}: {key} rope_type '{kind}' is not supported (default, llama3)")
    return theta, check_llama3_scaling(rope, f"{source}: {key}")


def _hf_block_size(hf: dict, source: str) -> int:
    """max_position_embeddings, or the sliding window where one is active and shorter: up to the
    window's length, sliding-window attention is plain causal attention (Mistral 7B v0.1)."""
    block = _hf_key(hf, "max_position_embeddings", source)
    window = hf.get("sliding_window")
    active = hf.get("use_sliding_window", True) and "sliding_attention" in hf.get("layer_types", ["sliding_attention"])
    return min(block, window) if active and window else block


# ---- Hugging Face: folders ----------------------------------------------------------------------


def write_hf(model: Decoder, folder: Path, eos_id: Optional[int] = None) -> None:
    """A Hugging Face folder (config.json, model.safetensors, generation_config.json) into `folder`:
    what `transformers` loads as GPT2LMHeadModel or LlamaForCausalLM (Qwen2ForCausalLM). eos_id:
    the end-of-text id to write (default: the config's)."""
    folder = Path(folder)
    tensors = model_tensors(model)
    if isinstance(model, GPT):
        blocker = gpt2_blocker(model.config)
        if blocker is not None:
            raise PipelineError(f"Hugging Face GPT-2 cannot represent {blocker}; export needs GPT-2's own layers")
        hf = gpt2_hf_config(model.config, eos_id)
        tensors = {name: t.t().contiguous() if name.endswith(GPT2_CONV1D) else t for name, t in tensors.items()}
    else:
        hf = llama_hf_config(model.config, eos_id)
    write_safetensors(tensors, folder / WEIGHTS_FILE)
    write_json(folder / HF_CONFIG_FILE, hf)
    write_json(folder / GENERATION_CONFIG_FILE, {key: hf[key] for key in ("bos_token_id", "eos_token_id")})


def read_hf(path: Path, map_location="cpu", dropout: Optional[float] = None) -> Decoder:
    """Load a local Hugging Face folder: GPT-2, Llama, Qwen2 or Mistral. dropout: override HF's."""
    source = path / HF_CONFIG_FILE
    if not source.is_file():
        raise PipelineError(f"{source}: not found (not a Hugging Face model folder)")
    hf = read_config(source)
    if hf.get("model_type", "gpt2") == "gpt2":
        config = gpt2_config(hf, str(source), dropout)
        tensors, weights = read_hf_tensors(path)
        return build(GPT, config, gpt2_tensors(tensors), weights, map_location)
    config = llama_config(hf, str(source), dropout)
    tensors, weights = read_hf_tensors(path)
    tensors = {name: t for name, t in tensors.items() if not name.endswith(LLAMA_IGNORED)}
    return build(Llama, config, tensors, weights, map_location)


def read_hf_tensors(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Tensors of a HF folder (safetensors or weights-only torch.load, single or sharded) and the file name."""
    for name in HF_WEIGHT_FILES:
        file = path / name
        if not file.is_file():
            continue
        files = [file]
        if name.endswith(".index.json"):
            shards = sorted(set(read_config(file).get("weight_map", {}).values()))
            files = [path / shard for shard in shards]
        tensors: dict[str, torch.Tensor] = {}
        for f in files:
            if not f.is_file():
                raise PipelineError(f"{file}: names the shard {f.name}, which is missing")
            if f.suffix == ".safetensors":
                tensors.update(read_safetensors(f))
                continue
            try:
                tensors.update(torch.load(f, map_location="cpu", weights_only=True))
            except Exception as exc:
                raise PipelineError(f"{f}: cannot be read as plain tensors ({type(exc).__name__})") from None
        return tensors, str(file)
    raise PipelineError(f"{path}: no {' or '.join(HF_WEIGHT_FILES)} found")


# ---- LoRA adapters ------------------------------------------------------------------------------


def write_adapter(folder: Path, tensors: dict[str, torch.Tensor], settings: dict, base: Path,
                  final_folder: Optional[Path] = None) -> None:
    """adapter.safetensors (`<layer>.lora_A` (r, in) and `<layer>.lora_B` (out, r) tensors) and
    adapter_config.json (`settings`: rank, alpha, dropout, modules) into `folder`. `base`, the folder
    the adapters were trained on, is stored relative to `final_folder` (default: folder) when they
    share a parent."""
    folder = Path(folder)
    write_safetensors(tensors, folder / ADAPTER_FILE)
    write_json(folder / ADAPTER_CONFIG_FILE, {"format": ADAPTER_FORMAT, "base": base_reference(Path(base), Path(final_folder or folder)),
                                              **settings})


def base_reference(base: Path, adapter_folder: Path) -> str:
    """The base folder relative to the adapter folder when they share a parent folder (so both can
    move together, as data/model and data/finetuned), else its absolute path."""
    base, adapter_folder = base.resolve(), adapter_folder.resolve()
    try:
        shared = Path(os.path.commonpath([base, adapter_folder]))
    except ValueError:  # another drive
        return str(base)
    return os.path.relpath(base, adapter_folder) if shared != Path(shared.anchor) else str(base)


def read_adapter_config(folder: Path) -> dict:
    """adapter_config.json, checked: one-line errors name the file and the key."""
    path = folder / ADAPTER_CONFIG_FILE
    cfg = read_config(path)
    kinds = {"base": (str, "a folder path"), "rank": (int, "an integer"), "alpha": ((int, float), "a number"),
             "dropout": ((int, float), "a number"), "modules": (list, "a list of layer names")}
    for key, (kind, what) in kinds.items():
        if not isinstance(cfg.get(key), kind) or isinstance(cfg.get(key), bool):
            raise PipelineError(f"{path}: '{key}' must be {what}, got {json.dumps(cfg.get(key))}")
    if cfg["rank"] < 1 or not cfg["modules"]:
        raise PipelineError(f"{path}: 'rank' must be >= 1 and 'modules' must name at least one layer")
    return cfg


def adapter_base(folder: Path, cfg: dict) -> Path:
    """The base folder an adapter folder's config names (relative to the adapter folder, or absolute)."""
    return Path(cfg["base"]) if os.path.isabs(cfg["base"]) else folder / cfg["base"]


def refuse_untracked_base(key: str, folder: Path) -> None:
    """One line when `folder` (what the param `key` names, a stage's DVC dependency) is a LoRA adapter
    folder whose base lies outside it: DVC would not see that base change, so the stage's output
    would silently go stale. Merging the adapters into one folder (`tinygpt export`) fixes that."""
    if not (folder / ADAPTER_CONFIG_FILE).is_file():
        return
    base = adapter_base(folder, read_adapter_config(folder))
    if not base.resolve().is_relative_to(folder.resolve()):
        raise PipelineError(f"{key}: {folder} holds LoRA adapters on {base}, which DVC does not track as an input of "
                            f"this stage; merge them first (tinygpt export --checkpoint {folder} --out models/merged) "
                            f"and set {key}: models/merged")


def read_adapter(folder: Path, map_location="cpu", dropout: Optional[float] = None) -> Decoder:
    """An adapter folder as a full model: its base (any folder `load_any` reads) with each adapter
    folded into its layer's weight, W + B A * alpha / rank (what LoRA training computes; done here
    rather than through model/lora.py so that loading a folder does not make the LoRA training code a
    dependency of every stage that loads one)."""
    cfg = read_adapter_config(folder)
    base, source = adapter_base(folder, cfg), folder / ADAPTER_FILE
    if not base.is_dir():
        raise PipelineError(f"{folder / ADAPTER_CONFIG_FILE}: base model folder {base} not found")
    if not source.is_file():
        raise PipelineError(f"{source}: not found")
    tensors = read_safetensors(source)
    expected = {f"{name}.lora_{part}" for name in cfg["modules"] for part in "AB"}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        what = f"missing tensor '{missing[0]}'" if missing else f"unexpected tensor '{unexpected[0]}'"
        raise PipelineError(f"{source}: {what} (the adapters do not match their config)")
    model = load_any(base, map_location, dropout)
    layers = dict(model.named_modules())
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    with torch.no_grad():
        for name in cfg["modules"]:
            layer = layers.get(name)
            if not isinstance(layer, nn.Linear) or id(layer.weight) in embeddings:
                raise PipelineError(f"{folder / ADAPTER_CONFIG_FILE}: layer '{name}' does not match the base model in {base}")
            a, b = tensors[f"{name}.lora_A"].float(), tensors[f"{name}.lora_B"].float()  # (r, in), (out, r)
            out, inp = layer.weight.shape
            if a.shape != (cfg["rank"], inp) or b.shape != (out, cfg["rank"]):
                raise PipelineError(f"{source}: the adapters of '{name}' do not fit its weight {(out, inp)} at rank {cfg['rank']}")
            layer.weight += ((b @ a) * (cfg["alpha"] / cfg["rank"])).to(layer.weight.device)
    return model


# ---- any folder ---------------------------------------------------------------------------------


def load_any(path: str | Path, map_location="cpu", dropout: Optional[float] = None) -> Decoder:
    """Load whatever a model folder holds: a LoRA adapter folder (its base with the adapters merged),
    ours (GPT-2 or Llama layout) or Hugging Face's (GPT-2, Llama, Qwen2, Mistral)."""
    path = Path(path)
    if (path / ADAPTER_CONFIG_FILE).is_file():
        return read_adapter(path, map_location, dropout)
    if (path / CONFIG_FILE).is_file():
        return read_ours(path, map_location, dropout)
    if (path / HF_CONFIG_FILE).is_file():
        return read_hf(path, map_location, dropout)
    if not path.is_dir():
        raise PipelineError(f"{path}: not found (a model folder)")
    raise PipelineError(f"{path}: neither a tinyGPT checkpoint ({CONFIG_FILE}), a Hugging Face folder ({HF_CONFIG_FILE}) "
                        f"nor a LoRA adapter folder ({ADAPTER_CONFIG_FILE})")

