"""Where the model runs: device, autocast, threads, the torchrun job, and the peak FLOP/s for MFU."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist

from pipeline.errors import PipelineError

# Dense bf16 tensor-core peak FLOP/s per device (no sparsity), for MFU, from NVIDIA's datasheets.
# Matched in order against torch.cuda.get_device_name, so the specific names come first.
GPU_PEAK_BF16 = (
    ("GB200", 2.5e15), ("B200", 2.25e15), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
    ("H200", 989e12), ("H800", 989e12), ("H20", 148e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12),
    ("L40", 181e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12),
)


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun). `launched`: started by
    torchrun, so a process group exists (also for one process: the job then runs DDP and its
    collectives through nccl or gloo, as a larger job would)."""

    rank: int = 0
    world: int = 1
    local_world: int = 1
    launched: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda`, `cuda:N`, or `auto` (cuda when available)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"device '{name}': CUDA is not available on this machine (use cpu or auto)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise PipelineError(f"device '{name}': not a device (use cpu, cuda, cuda:N or auto)") from None


def uses_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Whether `precision` computes in bf16 on `device`: auto is bf16 on CUDA and fp32 on CPU (bf16 on
    a CPU pays only where its matmuls are fast: bench/README.md), bf16 on either, fp32 never."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast_for(device: torch.device, precision: str = "auto") -> Callable[[], contextlib.AbstractContextManager]:
    """The autocast context of `precision` (`uses_bf16`)."""
    if uses_bf16(device, precision):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def prepare(device: torch.device) -> None:
    """Per-process settings for a device (TF32 matmuls on CUDA)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join the torchrun job when torchrun's RANK / WORLD_SIZE are set (nccl on CUDA, gloo on CPU)."""
    device = resolve_device(device_name)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist(), device
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return Dist(rank=rank, world=world, local_world=local_world, launched=True), device


def shutdown(d: Dist) -> None:
    if d.launched and dist.is_initialized():
        dist.destroy_process_group()


def set_threads(threads: int, d: Dist) -> None:
    """`threads` torch CPU threads, or (0) the cores shared evenly among this node's processes."""
    if threads <= 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // d.local_world)
    torch.set_num_threads(threads)


def gather(obj, d: Dist) -> list:
    """`obj` from every rank, in rank order (just `[obj]` without torchrun)."""
    if not d.launched:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum `tensor` over the ranks in place (a no-op without torchrun)."""
    if d.launched:
        dist.all_reduce(tensor)
    return tensor


def peak_flops(configured: float, device: torch.device) -> Optional[float]:
    """Per-device peak FLOP/s for MFU: `configured` when > 0, None when < 0, else the bf16 peak of a
    known GPU or a quick matmul measurement (fp32 on CPU, so CPU MFU is relative to what matmuls reach)."""
    if configured < 0:
        return None
    if configured > 0:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_BF16:
            if key in name:
                return value
    return measure_matmul_flops(device)


def measure_matmul_flops(device: torch.device, seconds: float = 0.3) -> float:
    """Best FLOP/s of a square matmul (bf16 on CUDA, fp32 on CPU) over about `seconds` of tries."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        start = time.perf_counter()
        a @ b
        sync()
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best
