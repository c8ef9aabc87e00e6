"""bench/gpu_check.py runs end to end in its toy `--cpu` mode, so that it cannot rot before a GPU runs it."""

import json
import math
import os
import subprocess
import sys

from tests.helpers import REPO


def test_gpu_check_runs_every_check_on_cpu(tmp_path):
    out = tmp_path / "check.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--cpu", "--json", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["device"] == "cpu"
    for optimizer in ("adamw", "muon"):
        assert r["throughput"][optimizer]["tokens_per_s"] > 0 and r["throughput"][optimizer]["timed_steps"] == 5
    recipe = r["recipe"]
    assert math.isfinite(recipe["target_val_loss"]) and recipe["classic"]["seconds_to_target"] > 0
    assert len(recipe["modern"]["curve"]) == 3, "an evaluation every 20 of 60 steps"
    assert r["doc_mask"]["loss_difference"] < 1e-5, "flex and dense masks give the same loss (forward, on CPU)"
    assert r["torchrun"]["interrupted"] and r["torchrun"]["identical"], "killed after its first checkpoint, resumed bit for bit"
    assert r["generation"]["same_tokens"] == 1.0 and r["generation"]["transformers"]["tokens_per_s"] > 0
    fsdp = r["fsdp"]
    assert fsdp["processes"] == 2 and fsdp["interrupted"] and fsdp["identical"], "sharded over 2 processes, resumed bit for bit"
    assert "| torchrun (gloo, 1 processes) resume | interrupted True" in proc.stdout
    assert "| fsdp (gloo, 2 processes) resume | interrupted True" in proc.stdout
