"""Is the GPU path healthy? One run (about 5-8 minutes on one H100) that prints a table and writes JSON.

    python bench/gpu_check.py [--json gpu_check.json]
    python bench/gpu_check.py --cpu [--json out.json]    # the same checks at toy sizes on CPU (tests/bench runs it)

1. throughput: GPT-2 124M (preset gpt2, vocab padded to 50304, block 1024, batch 16 x 4 accumulated)
   in bf16 autocast with `torch.compile`, through `model.train.train` on random token ids: the
   trainer's tokens/s (first step, which compiles, left out) and MFU against the GPU's bf16 peak
   (`model.runtime.GPU_PEAK_BF16`), with AdamW and with Muon.
2. recipe: the modern recipe (`model.recipe: modern`, `train.optimizer: muon`) against GPT-2's
   (AdamW, classic layers) on the same text (`pydoc_data.topics` as characters; 6 layers, 384
   wide, block 256, batch 64, eager): the time each takes to reach the classic run's final val loss.
3. doc mask: document masking by FlexAttention block mask against the dense (B, 1, T, T) mask on
   GPT-2 124M with documents of 50-600 tokens: ms per forward + backward, peak memory, and the loss
   of both kernels on the same weights and batch (bf16, so equal within ~1e-2).
4. torchrun: a 1-process `torchrun` job (nccl; gloo with --cpu) killed right after its first
   checkpoint and run again, against one uninterrupted run: the largest weight difference (0 on
   CPU; on CUDA non-deterministic kernels may leave a little).
5. generation: batch-1 greedy decoding with the KV cache, GPT-2 124M with random weights (fp32,
   TF32 matmuls), ours against transformers' GPT2LMHeadModel.generate on the same weights.
6. fsdp: `train.parallel: fsdp` (FSDP2, AdamW) under torchrun over every GPU (2 processes with
   --cpu; skipped on a one-GPU machine, where nothing would be sharded), killed right after its first sharded checkpoint and run again, against one
   uninterrupted sharded run: the largest weight difference of the gathered final models.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.nanogpt_bench import timed_run  # noqa: E402
from bench.train_bench import make_char_data, make_random_data  # noqa: E402

RUNNER = """
import json, os, sys, torch
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from model.metrics import Tracker
from model.train import train
from model.config import ModelConfig, TrainConfig
spec = json.loads(Path(sys.argv[1]).read_text())
timing = spec.get("timing")
tracker = Tracker(Path(timing).parent / "metrics", timing_file=timing) if timing else Tracker(None)
res = train(spec["seed"], ModelConfig(**spec["model"]), TrainConfig(**spec["train"]), tracker=tracker, **spec["paths"])
if spec.get("weights") and int(os.environ.get("RANK", "0")) == 0:
    torch.save({k: v.detach().cpu() for k, v in res.model.state_dict().items()}, spec["weights"])
"""

# Sizes: (GPU, --cpu)
SIZES = {
    "throughput": ({"model": dict(preset="gpt2"), "block": 1024, "vocab": 50304, "batch": 16, "accum": 4, "steps": 30},
                   {"model": dict(preset=None, n_layer=2, n_head=2, n_embd=32), "block": 32, "vocab": 512, "batch": 4, "accum": 2, "steps": 6}),
    "recipe": ({"model": dict(preset=None, n_layer=6, n_head=6, n_embd=384), "block": 256, "batch": 64, "steps": 1000, "eval": 100},
               {"model": dict(preset=None, n_layer=2, n_head=2, n_embd=32), "block": 32, "batch": 8, "steps": 60, "eval": 20}),
    "doc_mask": ({"model": dict(preset="gpt2"), "block": 1024, "vocab": 50304, "batch": 8, "steps": 10},
                 {"model": dict(preset=None, n_layer=2, n_head=2, n_embd=32), "block": 64, "vocab": 512, "batch": 2, "steps": 2}),
    "torchrun": ({"model": dict(preset=None, n_layer=4, n_head=4, n_embd=256), "block": 256, "batch": 32, "steps": 40, "every": 10},
                 {"model": dict(preset=None, n_layer=2, n_head=2, n_embd=32), "block": 32, "batch": 4, "steps": 12, "every": 4}),
    "fsdp": ({"model": dict(preset=None, n_layer=4, n_head=4, n_embd=256), "block": 256, "batch": 32, "steps": 40, "every": 10},
             {"model": dict(preset=None, n_layer=2, n_head=2, n_embd=32), "block": 32, "batch": 4, "steps": 12, "every": 4}),
    "generation": ({"model": dict(preset="gpt2"), "vocab": 50257, "block": 1024, "new": 200},
                   {"model": dict(preset=None, n_layer=2, n_head=2, n_embd=32), "vocab": 512, "block": 64, "new": 24}),
}


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}


def launch(spec: dict, tmp: Path, name: str, torchrun: bool = False, watch=None, processes: int = 1) -> subprocess.CompletedProcess | None:
    """Run RUNNER on `spec` in a fresh process (under a torchrun of `processes` when asked). `watch`:
    a function polled while it runs; when it returns True the process is killed (SIGKILL)."""
    (tmp / "runner.py").write_text(RUNNER)
    (tmp / f"{name}.json").write_text(json.dumps(spec))
    prefix = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if torchrun
              else [sys.executable])
    cmd = [*prefix, str(tmp / "runner.py"), str(tmp / f"{name}.json"), str(ROOT)]
    if watch is None:
        out = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
        return out
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while proc.poll() is None and not watch():
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its worker
    proc.wait()
    return None


def paths(data: dict, tmp: Path, name: str) -> dict:
    return {"train_dir": str(data["train_dir"]), "val_dir": str(data["val_dir"]),
            "vocab_dir": str(data["vocab_dir"]) if data.get("vocab_dir") else None,
            "out_dir": str(tmp / name / "model"), "checkpoint_dir": str(tmp / name / "checkpoints")}


def check_throughput(device: str, size: dict, tmp: Path) -> dict:
    data = make_random_data(tmp / "random", size["block"], size["vocab"], min(size["vocab"], 50257),
                            n_blocks=size["batch"] * size["accum"] * (size["steps"] + 1))
    out = {}
    for optimizer in ("adamw", "muon"):
        timing = tmp / optimizer / "timing.json"
        train = dict(device=device, batch_size=size["batch"], grad_accum=size["accum"], max_iters=size["steps"], lr=6e-4,
                     min_lr=6e-5, warmup_iters=2, optimizer=optimizer, eval_interval=0, eval_blocks=1, checkpoint_interval=0,
                     compile=device == "cuda", log_interval=max(1, size["steps"] // 3), peak_flops=0.0 if device == "cuda" else -1.0)
        spec = {"seed": 0, "model": dict(size["model"], dropout=0.0), "train": train, "paths": paths(data, tmp, optimizer),
                "timing": str(timing)}
        start = time.perf_counter()
        launch(spec, tmp, f"throughput-{optimizer}")
        t = json.loads(timing.read_text())
        out[optimizer] = {"tokens_per_s": t["tokens_per_s"], "mfu": t["mfu"], "timed_steps": t["timed_steps"],
                          "wall_s": time.perf_counter() - start}
    return out


def check_recipe(device: str, size: dict, tmp: Path) -> dict:
    data = make_char_data(tmp / "chars", size["block"])
    recipes = {
        "classic": ({}, dict(optimizer="adamw")),
        "modern": (dict(recipe="modern"), dict(optimizer="muon", lr=3e-3, min_lr=3e-4)),
    }
    runs = {}
    for name, (model_extra, train_extra) in recipes.items():
        train = dict(dict(device=device, batch_size=size["batch"], max_iters=size["steps"], lr=1e-3, min_lr=1e-4,
                          warmup_iters=size["steps"] // 20, beta2=0.99, eval_interval=size["eval"], eval_blocks=64,
                          checkpoint_interval=0, log_interval=size["eval"], peak_flops=-1.0), **train_extra)
        spec = {"seed": 0, "model": dict(size["model"], dropout=0.0, bias=False, **model_extra), "train": train,
                "paths": paths(data, tmp, name)}
        (tmp / "runner.py").write_text(RUNNER)
        (tmp / f"recipe-{name}.json").write_text(json.dumps(spec))
        wall, evals = timed_run([sys.executable, str(tmp / "runner.py"), str(tmp / f"recipe-{name}.json"), str(ROOT)], ROOT,
                                r"step (\d+): val loss ([\d.]+)", env())
        runs[name] = {"wall_s": wall, "evals": evals}
    target = runs["classic"]["evals"][-1][2]
    out = {"target_val_loss": target}
    for name, run in runs.items():
        reached = next((t for t, _, loss in run["evals"] if loss <= target), None)
        out[name] = {"wall_s": run["wall_s"], "final_val_loss": run["evals"][-1][2], "seconds_to_target": reached, "curve": run["evals"]}
    classic_s, modern_s = out["classic"]["seconds_to_target"], out["modern"]["seconds_to_target"]
    out["time_ratio"] = modern_s / classic_s if modern_s and classic_s else None
    return out


def check_doc_mask(device: str, size: dict) -> dict:
    from model.gpt import GPT, GPTConfig
    from model.runtime import autocast_for, prepare
    from model.config import ModelConfig

    dev = torch.device(device)
    prepare(dev)
    torch.manual_seed(0)
    cfg = GPTConfig.from_params(ModelConfig(**size["model"], doc_mask=True), size["vocab"], size["block"])
    model = GPT(cfg).to(dev)
    B, T = size["batch"], size["block"]
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, min(size["vocab"], 50257), (B, T + 1), generator=gen).to(dev)
    lengths = torch.randint(50 if device == "cuda" else 5, 600 if device == "cuda" else 30, (B, T), generator=gen)
    segments = (torch.cumsum(lengths, 1)[:, :, None] <= torch.arange(T)[None, None]).sum(1).to(dev) + 1  # (B, T)
    autocast = autocast_for(dev)
    out = {}
    for kernel in ("dense", "flex"):
        model.doc_mask_kernel = kernel
        if kernel == "flex" and device != "cuda":
            with torch.no_grad(), warnings.catch_warnings(), autocast():
                warnings.simplefilter("ignore")
                _, loss = model(idx[:, :-1], targets=idx[:, 1:], segment_ids=segments)
            out[kernel] = {"loss": float(loss), "note": "forward only: flex attention has no CPU backward in torch 2.13"}
            continue
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        times = []
        for i in range(3 + size["steps"]):
            sync(dev)
            start = time.perf_counter()
            with autocast():
                _, loss = model(idx[:, :-1], targets=idx[:, 1:], segment_ids=segments)
            loss.backward()
            model.zero_grad(set_to_none=True)
            sync(dev)
            if i >= 3:
                times.append(time.perf_counter() - start)
            if i == 0:
                first_loss = float(loss.detach())
        out[kernel] = {"loss": first_loss, "ms_per_step": 1e3 * sorted(times)[len(times) // 2],
                       "peak_memory_gb": torch.cuda.max_memory_allocated(dev) / 1e9 if device == "cuda" else None}
    out["loss_difference"] = abs(out["flex"]["loss"] - out["dense"]["loss"])
    return out


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def check_torchrun(device: str, size: dict, tmp: Path, parallel: str = "ddp", processes: int = 1) -> dict:
    """A torchrun job killed after its first checkpoint and run again, against an uninterrupted one."""
    from safetensors.torch import load_file

    data = make_char_data(tmp / "chars-torchrun", size["block"])
    train = dict(device=device, batch_size=size["batch"] // processes, max_iters=size["steps"], lr=1e-3, min_lr=1e-4,
                 warmup_iters=2, optimizer="muon" if parallel == "ddp" else "adamw", parallel=parallel, eval_interval=size["every"],
                 eval_blocks=8, checkpoint_interval=size["every"], log_interval=size["every"], peak_flops=-1.0)
    model = dict(size["model"], dropout=0.0, recipe="modern")
    whole = {"seed": 0, "model": model, "train": train, "paths": paths(data, tmp, "whole")}
    start = time.perf_counter()
    launch(whole, tmp, "torchrun-whole", torchrun=True, processes=processes)
    resumed = {"seed": 0, "model": model, "train": train, "paths": paths(data, tmp, "resumed")}
    checkpoints = Path(resumed["paths"]["checkpoint_dir"])
    launch(resumed, tmp, "torchrun-killed", torchrun=True, processes=processes,
           watch=lambda: any(checkpoints.glob("step-*/train_state.pt")))
    killed_at = sorted(p.name for p in checkpoints.glob("step-*"))
    finished_early = Path(resumed["paths"]["out_dir"]).exists()
    launch(resumed, tmp, "torchrun-resumed", torchrun=True, processes=processes)
    a = load_file(str(Path(whole["paths"]["out_dir"]) / "model.safetensors"))
    b = load_file(str(Path(resumed["paths"]["out_dir"]) / "model.safetensors"))
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    return {"backend": "nccl" if device == "cuda" else "gloo", "processes": processes, "killed_after": killed_at,
            "interrupted": not finished_early, "max_weight_difference": diff, "identical": diff == 0.0,
            "wall_s": time.perf_counter() - start}


def check_fsdp(device: str, size: dict, tmp: Path) -> dict:
    """`check_torchrun` sharded over every GPU (2 processes on CPU); one GPU shards nothing, so skipped."""
    processes = torch.cuda.device_count() if device == "cuda" else 2
    if processes < 2:
        return {"skipped": f"needs 2 or more GPUs to shard over, this machine has {processes}"}
    return check_torchrun(device, size, tmp, "fsdp", processes)


def check_generation(device: str, size: dict, tmp: Path) -> dict:
    import transformers

    from model.config import ModelConfig
    from model.folders import write_hf
    from model.gpt import GPT, GPTConfig
    from model.runtime import prepare

    dev = torch.device(device)
    prepare(dev)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_params(ModelConfig(**size["model"]), size["vocab"], size["block"])).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5.0)  # peakier logits than the init's, so greedy choices are clear-cut
    (tmp / "hf").mkdir()
    write_hf(model, tmp / "hf")
    model = model.to(dev)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp / "hf").to(dev).eval()
    prompt = torch.randint(0, size["vocab"], (1, 16), generator=torch.Generator().manual_seed(1)).to(dev)
    new = size["new"]

    def ours():
        return model.generate(prompt, new, temperature=0.0)

    def theirs():
        return hf.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)

    out = {}
    for name, fn in (("ours", ours), ("transformers", theirs)):
        with torch.no_grad():
            fn()  # warm-up
            sync(dev)
            start = time.perf_counter()
            ids = fn()
            sync(dev)
        out[name] = {"tokens_per_s": new / (time.perf_counter() - start)}
        out[name]["ids"] = ids[0, prompt.size(1):].tolist()
    same = sum(a == b for a, b in zip(out["ours"].pop("ids"), out["transformers"].pop("ids")))
    out["same_tokens"] = same / new
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="toy sizes on CPU (gloo, no compile): checks that the script runs")
    p.add_argument("--json", type=Path, default=Path("gpu_check.json"), help="where to write the numbers")
    p.add_argument("--only", nargs="+", choices=list(SIZES), help="run only these checks")
    args = p.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here (use --cpu for the toy run)")
    device = "cpu" if args.cpu else "cuda"
    pick = 1 if args.cpu else 0
    result = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    checks = {
        "throughput": lambda s, tmp: check_throughput(device, s, tmp),
        "recipe": lambda s, tmp: check_recipe(device, s, tmp),
        "doc_mask": lambda s, tmp: check_doc_mask(device, s),
        "torchrun": lambda s, tmp: check_torchrun(device, s, tmp),
        "fsdp": lambda s, tmp: check_fsdp(device, s, tmp),
        "generation": lambda s, tmp: check_generation(device, s, tmp),
    }
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for name, run in checks.items():
            if args.only and name not in args.only:
                continue
            start = time.perf_counter()
            folder = Path(tmp) / name
            folder.mkdir()
            try:
                result[name] = run(SIZES[name][pick], folder)
            except Exception as exc:  # one failing check must not hide the others' numbers
                result[name] = {"error": f"{type(exc).__name__}: {str(exc)[-2000:]}"}
            result[name]["check_seconds"] = time.perf_counter() - start
            print(f"{name}: done in {result[name]['check_seconds']:.0f} s", flush=True)
    args.json.write_text(json.dumps(result, indent=1, default=str))
    print(table(result))
    if any("error" in v for v in result.values() if isinstance(v, dict)):
        raise SystemExit(1)


def table(r: dict) -> str:
    """The numbers that matter, as markdown."""
    def f(value, fmt):
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)

    lines = [f"device: {r['device']}, torch {r['torch']}", "", "| check | result |", "|---|---|"]
    for name in SIZES:
        v = r.get(name)
        if v is None:
            continue
        if "error" in v:
            lines.append(f"| {name} | FAILED: {v['error'].splitlines()[-1][:200]} |")
            continue
        if "skipped" in v:
            lines.append(f"| {name} | skipped: {v['skipped']} |")
            continue
        if name == "throughput":
            for opt in ("adamw", "muon"):
                lines.append(f"| throughput, {opt} | {f(v[opt]['tokens_per_s'], ',.0f')} tokens/s, MFU {f(v[opt]['mfu'], '.1%')} |")
        elif name == "recipe":
            lines.append(f"| recipe: seconds to val {v['target_val_loss']:.3f} | classic {f(v['classic']['seconds_to_target'], '.1f')}, "
                         f"modern {f(v['modern']['seconds_to_target'], '.1f')} (ratio {f(v['time_ratio'], '.2f')}) |")
        elif name == "doc_mask":
            for k in ("dense", "flex"):
                lines.append(f"| doc mask, {k} | {f(v[k].get('ms_per_step'), '.1f')} ms/step, {f(v[k].get('peak_memory_gb'), '.2f')} GB, "
                             f"loss {v[k]['loss']:.4f} {v[k].get('note', '')} |")
            lines.append(f"| doc mask, flex vs dense loss | {v['loss_difference']:.2e} |")
        elif name in ("torchrun", "fsdp"):
            lines.append(f"| {name} ({v['backend']}, {v['processes']} processes) resume | interrupted {v['interrupted']}, "
                         f"max weight difference {v['max_weight_difference']:.2e} |")
        elif name == "generation":
            lines.append(f"| generation, tokens/s | ours {v['ours']['tokens_per_s']:.1f}, transformers "
                         f"{v['transformers']['tokens_per_s']:.1f}, same tokens {v['same_tokens']:.0%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
