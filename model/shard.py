"""FSDP2 (`train.parallel: fsdp` under torchrun): the model's weights, gradients and optimizer state
sharded over the job's processes, for models whose full training state does not fit one device.

DDP keeps a full copy of everything on every device: for AdamW in fp32 that is 16 bytes a
parameter (weights, gradients, two moments), ~112 GB for a 7B model before activations. Here
`torch.distributed.fsdp.fully_shard` wraps each transformer block and then the root, so each
process holds 1/N of every tensor (DTensors) and gathers a block's weights only while it runs:
- building: rank 0 alone builds (or loads, from `train.init_from`) the full model on its CPU; the
  other ranks build a skeleton on the meta device; every rank shards it, and rank 0's weights are
  broadcast into the shards, so no process holds more than its shard on the device;
- mixed precision: on CUDA with bf16, blocks compute in bf16 and reduce gradients in fp32
  (`MixedPrecisionPolicy`); the shards and the optimizer stay fp32;
- checkpoints: `torch.distributed.checkpoint` (DCP) writes every rank's shards of the model and
  optimizer into `shards/` of the checkpoint folder, which every node must see (shared storage).
  DCP reshards on load, so a checkpoint resumes on another number of processes (the trainer
  requires the same global batch, batch_size x processes, so that the run is the same one);
- the final model is gathered to rank 0 and written in the usual folder format.

Muon does not run here: its Newton-Schulz orthogonalisation needs whole matrices and the shards
are row slices; `train.optimizer: muon` with `parallel: fsdp` is refused at load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from model.checkpoint import checkpoint_folder, finish_checkpoint
from model.decoder import Decoder
from model.folders import NETWORKS, build
from model.runtime import Dist
from pipeline.errors import PipelineError

SHARDS_DIR = "shards"  # in a checkpoint folder: the DCP checkpoint of the sharded model and optimizer


def main_only(fn: Callable[[], object], d: Dist):
    """Run `fn` on rank 0 alone and hand its (picklable) result to every rank. An error there is
    raised on every rank (rank 0's own exception on rank 0, one line elsewhere), so no rank waits
    forever in the next collective for one that failed (a full disk, a model that does not load)."""
    message, failure = [None], None
    if d.main:
        try:
            message = [("ok", fn())]
        except Exception as exc:  # every kind: the other ranks would otherwise wait in the broadcast
            failure = exc
            message = [("error", str(exc) if isinstance(exc, PipelineError) else f"rank 0: {type(exc).__name__}: {exc}")]
    dist.broadcast_object_list(message, src=0)
    if failure is not None:
        raise failure
    kind, value = message[0]
    if kind == "error":
        raise PipelineError(value)
    return value


def on_rank0(make: Callable[[], Decoder], d: Dist) -> tuple[Optional[Decoder], type, object]:
    """Rank 0 runs `make` (build or load the full model); every rank gets its network class and config."""
    built: list[Decoder] = []

    def describe():
        built.append(make())
        return type(built[0]), built[0].config

    kind, config = main_only(describe, d)
    return (built[0] if built else None), kind, config


def shard(full: Optional[Decoder], network: type, config, device: torch.device, bf16: bool, compile_blocks: bool) -> Decoder:
    """The model sharded over the job: a meta skeleton of `network(config)`, each block and then the
    root wrapped by `fully_shard`, the shards put on `device` and filled from rank 0's `full`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    with torch.device("meta"):
        model = network(config)
    for block in model.blocks():
        if compile_blocks:
            block.compile(dynamic=False)
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    model.to_empty(device=device)
    for name, buffer in model.fresh_buffers(device).items():
        setattr(model, name, buffer)
    state = full.state_dict() if full is not None else {}
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    return model


def gathered(model: Decoder, d: Dist) -> Optional[Decoder]:
    """The whole model on rank 0's CPU (every rank takes part in the gathering); None elsewhere."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not d.main:
        return None
    network = NETWORKS[model.ARCH]
    return build(network, model.config, dict(state), "the gathered shards", "cpu")


def _states(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}


def save_sharded(checkpoint_dir: Path, model, optimizer: torch.optim.Optimizer, state: dict, manifest: dict, d: Dist) -> None:
    """Every rank writes its shards into a temporary folder that rank 0 made; rank 0 adds the train
    state and the data manifest and publishes it as `model.checkpoint.save_checkpoint` does."""
    import torch.distributed.checkpoint as dcp

    tmp = Path(main_only(lambda: str(checkpoint_folder(checkpoint_dir, state["step"])), d))
    dcp.save(_states(model, optimizer), checkpoint_id=tmp / SHARDS_DIR)  # ends in a collective: every shard is written
    main_only(lambda: str(finish_checkpoint(checkpoint_dir, tmp, state, manifest)), d)


def load_sharded(path: Path, model, optimizer: torch.optim.Optimizer) -> None:
    """Fill the model's and the optimizer's shards from a sharded checkpoint folder (DCP reshards
    when the job has another number of processes than the one that saved it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    states = _states(model, optimizer)
    dcp.load(states, checkpoint_id=path / SHARDS_DIR)
    set_model_state_dict(model, states["model"])
    set_optimizer_state_dict(model, optimizer, states["optim"])
