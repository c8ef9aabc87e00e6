"""Each switch of the modern recipe on its own, at equal wall time, over seeds.

    python bench/recipe_bench.py --data nanogpt --seeds 1 2 3                  # nanoGPT's CPU config on pydoc chars
    python bench/recipe_bench.py --data default --seeds 1 2 --steps 500        # the default run's data and model
    python bench/recipe_bench.py --data nanogpt --variants classic muon --set train.muon_lr=0.04

Every variant is the baseline (GPT-2's layers, AdamW: `--data`'s config) with some params changed
(VARIANTS): each switch on its own, all of them (`all`), all but one (`all-no-<switch>`), the
`modern` preset, the Llama layout, bf16 autocast. Equal wall time: the baseline runs `--steps` optimizer steps; each variant first times
a short probe of itself (`--probe` steps, the first untimed) and then gets as many steps as fit
in the baseline's step time, with warmup scaled alike. Each run is a fresh process calling
`model.train.train` (no periodic evaluation, no checkpoints but the last), timed around that call;
then `model.evaluate.evaluate` scores it (not timed): every val block for `nanogpt`, the evaluate
stage's 256 blocks per source for `default`. Reported per variant: steps, wall seconds, and the
mean ± standard error over seeds of the val loss (nanogpt) or bits per byte per source (default),
with the difference to the baseline and its 95% interval (paired by seed: same data order and
init seed). Data:
- nanogpt: `pydoc_data.topics` as characters, 4 layers / 4 heads / 128 wide, block 64, batch 12,
  lr 1e-3 -> 1e-4, warmup 100, beta2 0.99, no biases (bench/nanogpt_bench.py's run);
- default: `data/packed` and `data/vocab` of this checkout (`dvc repro pack` first) with the
  model and train params of `params.yaml`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.stats import t975  # noqa: E402

# Each switch on its own: params changed from the baseline ("model.x" / "train.x": value)
SWITCHES: dict[str, dict] = {
    "muon": {"train.optimizer": "muon"},
    "rope": {"model.positions": "rope"},
    "rmsnorm": {"model.norm": "rmsnorm"},
    "relu2": {"model.mlp": "relu2"},
    "qk_norm": {"model.qk_norm": True},
    "zero_init": {"model.zero_init": True},
    "softcap": {"model.logit_softcap": 15.0},
    "unet": {"model.unet": True},
    "untied": {"model.tie_weights": False},
}
ALL = {k: v for name, change in SWITCHES.items() if name != "untied" for k, v in change.items()}
CLASSIC = {"train.optimizer": "adamw", "model.positions": "learned", "model.norm": "layernorm", "model.mlp": "gelu",
           "model.qk_norm": False, "model.zero_init": False, "model.logit_softcap": 0.0, "model.unet": False}
VARIANTS: dict[str, dict] = {
    "classic": {},
    **SWITCHES,
    "all": ALL,  # every switch but untied, Muon included
    **{f"all-no-{name}": {**ALL, **{k: CLASSIC[k] for k in change}} for name, change in SWITCHES.items() if name != "untied"},
    **{"muon+" + "+".join(names): {k: v for n in ("muon", *names) for k, v in SWITCHES[n].items()}
       for names in (("rope",), ("relu2",), ("softcap",), ("rope", "relu2"), ("rope", "softcap"), ("rope", "relu2", "softcap"))},
    "modern": {"model.recipe": "modern", "train.optimizer": "muon"},  # the preset as pipeline.config.RECIPES has it
    "llama": {"model.arch": "llama", "model.preset": "llama-cpu"},
    "llama-muon": {"model.arch": "llama", "model.preset": "llama-cpu", "train.optimizer": "muon"},
    "bf16": {"train.precision": "bf16"},  # autocast on the CPU (fast only where bf16 matmuls are: AMX)
}
RUNNER = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from bench.recipe_bench import run_one
print("RESULT " + json.dumps(run_one(json.loads(Path(sys.argv[1]).read_text()))), flush=True)
"""


def nanogpt_setup(root: Path) -> dict:
    """The char data of bench/nanogpt_bench.py and its config, as params dicts."""
    from bench.nanogpt_bench import CONFIG, VAL_FRACTION, char_stream, write_ours

    tok, ids = char_stream()
    paths = write_ours(root, tok, ids, int(len(ids) * (1 - VAL_FRACTION)), CONFIG["block"])
    c = CONFIG
    model = dict(preset=None, n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"], dropout=0.0, bias=False)
    train = dict(device="cpu", batch_size=c["batch"], lr=c["lr"], min_lr=c["min_lr"], warmup_iters=c["warmup"], beta2=0.99)
    return {"paths": paths, "model": model, "train": train, "eval_blocks": 0, "seed_offset": 0}


def default_setup(root: Path) -> dict:
    """This checkout's packed data and params.yaml's model and train sections."""
    import dataclasses

    from model.config import RECIPES
    from pipeline.config import load_params

    params = load_params(ROOT / "params.yaml")
    data = ROOT / "data"
    if not (data / "packed/train/manifest.json").is_file():
        raise SystemExit("no data/packed: run `dvc repro pack` first")
    paths = {"train_dir": str(data / "packed/train"), "val_dir": str(data / "packed/val"), "vocab_dir": str(data / "vocab"),
             "out_dir": str(root / "model"), "checkpoint_dir": str(root / "checkpoints")}
    model = dict(dataclasses.asdict(params.model), recipe="classic", **{name: None for name in RECIPES["classic"]})
    train = dict(dataclasses.asdict(params.train), optimizer="adamw")  # the baseline is GPT-2's recipe, whatever the default run uses
    return {"paths": paths, "model": model, "train": train, "eval_blocks": params.evaluate.max_blocks}


def run_one(spec: dict) -> dict:
    """Train one variant (timed), then score it on the val sets (not timed)."""
    import shutil
    import time

    from model.evaluate import evaluate
    from model.metrics import Tracker
    from model.train import train
    from model.config import EvaluateConfig, ModelConfig, TrainConfig
    from pipeline.typed import from_dict

    for name in ("out_dir", "checkpoint_dir"):
        shutil.rmtree(spec["paths"][name], ignore_errors=True)
    model_cfg = from_dict(ModelConfig, spec["model"], "model")
    train_cfg = from_dict(TrainConfig, spec["train"], "train")
    metrics_dir = Path(spec["paths"]["out_dir"]).parent / "metrics"
    tracker = Tracker(metrics_dir, timing_file=metrics_dir / "timing.json")
    start = time.perf_counter()
    result = train(spec["seed"], model_cfg, train_cfg, tracker=tracker, **spec["paths"])
    wall = time.perf_counter() - start
    timing = json.loads((metrics_dir / "timing.json").read_text())
    metrics = evaluate(spec["paths"]["out_dir"], spec["paths"]["val_dir"], EvaluateConfig(max_blocks=spec["eval_blocks"], device="cpu"))
    return {"wall": wall, "steps": result.summary["step"], "params": result.summary["params"], "metrics": metrics,
            "step_seconds": timing["step_seconds"] / max(1, timing["timed_steps"])}


def apply(base: dict, changes: dict) -> tuple[dict, dict]:
    model, train = dict(base["model"]), dict(base["train"])
    for key, value in changes.items():
        section, name = key.split(".", 1)
        (model if section == "model" else train)[name] = value
    if model.get("arch") == "llama":
        model.pop("bias", None)
        for name in ("recipe", "positions", "norm", "mlp", "qk_norm", "zero_init", "logit_softcap", "unet"):
            model.pop(name, None)
    return model, train


def launch(spec: dict, tmp: Path, name: str) -> dict:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(spec))
    (tmp / "runner.py").write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    out = subprocess.run([sys.executable, str(tmp / "runner.py"), str(path), str(ROOT)], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def step_seconds(setup: dict, model: dict, train: dict, probe: int, tmp: Path, name: str) -> float:
    """Seconds per optimizer step of a config: the faster of two probe runs (the first step of each
    not timed), since other work on the machine only ever slows a run down."""
    probe_train = dict(train, max_iters=probe, warmup_iters=0, eval_interval=0, eval_blocks=1, checkpoint_interval=0)
    spec = {"seed": 0, "model": model, "train": probe_train, "paths": setup["paths"], "eval_blocks": 1}
    return min(launch(spec, tmp, f"probe-{name}")["step_seconds"] for _ in range(2))


def mean_se(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=("nanogpt", "default"), default="nanogpt")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"from {', '.join(VARIANTS)}")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--steps", type=int, default=2000, help="the baseline's optimizer steps")
    p.add_argument("--probe", type=int, default=100, help="steps of each variant's timing probes (the faster of two counts)")
    p.add_argument("--same-steps", action="store_true", help="every variant runs --steps (no equal-time calibration: tuning)")
    p.add_argument("--base-step-seconds", type=float, help="the baseline's seconds per step from an earlier invocation "
                   "(its JSON's probe_step_seconds), so that runs added later get the same budget")
    p.add_argument("--set", nargs="*", default=[], help="extra changes for every variant, e.g. train.muon_lr=0.04")
    p.add_argument("--json", type=Path, help="write every run here")
    args = p.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant {unknown[0]} (choose from {', '.join(VARIANTS)})")
    extra = {k: json.loads(v) if v[:1] in "0123456789-[{tf" else v for k, v in (s.split("=", 1) for s in args.set)}
    with tempfile.TemporaryDirectory(prefix="recipe-bench-") as tmp:
        tmp = Path(tmp)
        setup = nanogpt_setup(tmp / "data") if args.data == "nanogpt" else default_setup(tmp)
        setup["paths"].update(out_dir=str(tmp / "model"), checkpoint_dir=str(tmp / "checkpoints"))
        base_model, base_train = apply(setup, {})
        base_seconds = None if args.same_steps else (
            args.base_step_seconds or step_seconds(setup, base_model, base_train, args.probe, tmp, "classic"))
        rows = {}
        for name in args.variants:
            model, train = apply(setup, {**VARIANTS[name], **extra})
            if args.same_steps:
                seconds, steps = None, args.steps
            else:
                seconds = base_seconds if name == "classic" and not extra else step_seconds(setup, model, train, args.probe, tmp, name)
                steps = max(1, round(base_seconds * args.steps / seconds))
            warmup = round(base_train["warmup_iters"] * steps / args.steps)
            train = dict(train, max_iters=steps, warmup_iters=warmup, eval_interval=0, eval_blocks=1, checkpoint_interval=0)
            runs = []
            for seed in args.seeds:
                r = launch({"seed": seed, "model": model, "train": train, "paths": setup["paths"], "eval_blocks": setup["eval_blocks"]},
                           tmp, f"{name}-{seed}")
                r.update(seed=seed, variant=name, probe_step_seconds=seconds)
                runs.append(r)
                print(json.dumps({k: r[k] for k in ("variant", "seed", "steps", "wall", "step_seconds")} | {
                    k: v for k, v in r["metrics"].items() if k.startswith(("loss", "bpb"))}), flush=True)
            rows[name] = runs
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    report(rows, args.data)


def report(rows: dict, data: str) -> None:
    """Markdown table: per variant, mean ± s.e. of each score, and the paired difference to classic."""
    first = next(iter(rows.values()))[0]["metrics"]
    keys = ["loss"] if data == "nanogpt" else sorted(k for k in first if k.startswith("bpb_"))
    base = {r["seed"]: r for r in rows.get("classic", [])}
    print("\n| variant | steps | wall s | " + " | ".join(f"{k} (mean ± s.e.)" for k in keys) + " | " +
          " | ".join(f"Δ{k} vs classic (95% CI)" for k in keys) + " |")
    print("|---|---:|---:|" + "---:|" * (2 * len(keys)))
    for name, runs in rows.items():
        cells = [name, str(runs[0]["steps"]), f"{statistics.fmean(r['wall'] for r in runs):.1f}"]
        for key in keys:
            m, se = mean_se([r["metrics"][key] for r in runs])
            cells.append(f"{m:.4f} ± {se:.4f}")
        for key in keys:
            diffs = [r["metrics"][key] - base[r["seed"]]["metrics"][key] for r in runs if r["seed"] in base]
            if name == "classic" or not diffs:
                cells.append("")
                continue
            m, se = mean_se(diffs)
            half = t975(len(diffs) - 1) * se if len(diffs) > 1 else float("nan")
            cells.append(f"{m:+.4f} ± {half:.4f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
