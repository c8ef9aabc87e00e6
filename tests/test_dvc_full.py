"""The whole pipeline through DVC on tiny params: repro, reproducibility across clones, experiments."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.test_dvc_pipeline import TINY_PARAMS, make_repo, ran, run

FULL_PARAMS = {
    **TINY_PARAMS,
    "pack": {"context_length": 192, "mode": "concat"},  # room for the instruction records of `finetune`
    "model": {"preset": "cpu-tiny", "dropout": 0.0, "tie_weights": True},
    "train": {
        "device": "cpu", "batch_size": 4, "max_iters": 30, "lr": 0.01, "min_lr": 0.001, "warmup_iters": 5,
        "eval_interval": 15, "eval_blocks": 4, "checkpoint_interval": 15, "threads": 1, "log_interval": 5,
        "peak_flops": -1.0, "init_from": "models/README.md",
    },
    "evaluate": {"max_blocks": 8, "batch_size": 8, "device": "cpu"},
    "sample": {"prompts": ["note "], "num_samples": 1, "max_new_tokens": 16, "device": "cpu"},
    "wandb": {"mode": "disabled", "project": "tinygpt-tests"},
    "finetune": {**TINY_PARAMS["finetune"], "epochs": 1, "batch_size": 8, "device": "cpu"},
}
DATA_STAGES = ("scan@notes", "scan@records", "vocab", "tokenize@notes", "tokenize@records", "dedup", "split@notes", "split@records", "mix", "pack")


def lock(repo: Path) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


def out_hashes(repo: Path, stage: str) -> dict:
    return {o["path"]: o["md5"] for o in lock(repo)[stage]["outs"]}


def loss_curve(repo: Path) -> list[tuple[str, str]]:
    rows = csv.DictReader((repo / "metrics/train/plots/metrics/train/loss.tsv").open(), delimiter="\t")
    return [(r["step"], r["loss"]) for r in rows]


@pytest.fixture(scope="module")
def clones(tmp_path_factory) -> tuple[Path, Path]:
    """Two independent copies of the project, each after a full `dvc repro`."""
    repos = []
    for name in ("a", "b"):
        repo = make_repo(tmp_path_factory.mktemp(f"clone-{name}"), FULL_PARAMS)
        run(["dvc", "repro"], repo)
        repos.append(repo)
    return repos[0], repos[1]


def test_repro_runs_every_stage_and_learns(clones):
    repo, _ = clones
    assert set(lock(repo)) >= set(DATA_STAGES) | {"train", "evaluate", "sample", "finetune"}
    metrics = json.loads((repo / "metrics/eval.json").read_text())
    assert metrics["loss"] < metrics["unigram_loss"], metrics
    assert {"loss_notes", "loss_records", "perplexity"} <= set(metrics)
    assert "## Prompt 1" in (repo / "data/samples.md").read_text()
    assert (repo / "data/finetuned/template.json").is_file()
    shown = run(["dvc", "metrics", "show", "--json"], repo).stdout
    assert "unigram_loss" in shown and "achieved_share" in shown
    run(["dvc", "plots", "show", "-o", "plots-html"], repo)
    assert (repo / "plots-html/index.html").is_file()
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo).stdout
    assert {"bpb", "bpb_notes", "bpb_records"} <= set(metrics) and 0 < metrics["bpb"] < 8


def test_two_clones_give_identical_outputs_but_the_timing_file(clones):
    a, b = clones
    for stage in lock(a):
        ha, hb = out_hashes(a, stage), out_hashes(b, stage)
        ha.pop("metrics/train_timing.json", None), hb.pop("metrics/train_timing.json", None)
        assert ha == hb, stage  # weights, checkpoints, DVCLive curves and summaries, samples, fine-tune
    assert {"data/model", "data/checkpoints", "metrics/train/metrics.json", "metrics/train/plots"} <= set(out_hashes(a, "train"))
    timing = json.loads((a / "metrics/train_timing.json").read_text())
    assert timing["tokens_per_s"] > 0
    assert loss_curve(a) == loss_curve(b) and len(loss_curve(a)) == 6


def test_experiments_rerun_from_mix_and_compare(clones):
    repo, _ = clones
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "baseline"], repo)
    output = run(["dvc", "exp", "run", "-n", "notes-heavy", "-S", "mix.weights.notes=0.9"], repo).stdout
    stages = ran(output)
    assert {"mix", "pack", "train", "evaluate"} <= stages
    assert not any(s.startswith(("tokenize", "split", "vocab")) for s in stages), stages
    run(["git", "checkout", "--", "params.yaml"], repo)  # queue the grid from the baseline's params
    run(["dvc", "exp", "run", "--queue", "-S", "mix.weights.records=0.2,0.9"], repo)
    run(["dvc", "exp", "run", "--run-all"], repo)
    table = run(["dvc", "exp", "show", "--no-pager", "--md"], repo).stdout
    assert "notes-heavy" in table and "achieved_share" in table and "loss_notes" in table
    run(["python", "-m", "pipeline.compare", "--x", "notes"], repo)
    rows = list(csv.DictReader((repo / "reports/compare.csv").open()))
    assert len(rows) == 4, rows  # the baseline, notes-heavy and the two queued runs
    shares = sorted(float(r["share_notes"]) for r in rows)
    assert shares == pytest.approx([0.5 / 1.4, 0.5, 0.9 / 1.4, 0.5 / 0.7], abs=1e-3)
    assert (repo / "reports/compare.png").stat().st_size > 10_000

    seed = yaml.safe_load((repo / "params.yaml").read_text())["seed"]
    output = run(["python", "-m", "pipeline.replicate", "--seeds", "2", "--exp", "notes-heavy"], repo).stdout
    assert f"queued notes-heavy-s{seed + 1}" in output and "1 of 2 seeds already run" in output
    output = run(["dvc", "exp", "run", "--run-all"], repo).stdout
    assert "train" in ran(output) and not any(s.startswith(("tokenize", "split")) for s in ran(output))
    run(["python", "-m", "pipeline.compare", "--x", "notes"], repo)
    rows = list(csv.DictReader((repo / "reports/compare.csv").open()))
    heavy = next(r for r in rows if r["experiment"] == "notes-heavy")
    assert len(rows) == 4 and heavy["seeds"] == "2" and float(heavy["val_loss_overall_se"]) > 0
    assert "notes-heavy against" in (repo / "reports/compare.md").read_text()
    again = run(["python", "-m", "pipeline.replicate", "--seeds", "2", "--exp", "notes-heavy"], repo).stdout
    assert "0 replicates queued (2 of 2 seeds already run)" in again


def test_mixture_search_plans_runs_and_fits_through_dvc(clones):
    """plan -> dvc exp run --run-all -> fit -> verify, on the tiny project: four proxy mixtures over
    a grid of the two sources and the uniform anchor at two seeds, each proxy at a quarter of the
    steps, tokens and data; a recommendation (or "cannot tell") with its interval; verify's queue."""
    _, repo = clones
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "baseline"], repo)
    planned = run(["python", "-m", "pipeline.mixsearch", "plan", "--runs", "4", "--replicates", "2"], repo).stdout
    assert planned.count("dvc exp run --queue -n mixsearch-") == 6 and "mixsearch-uniform-s8" in planned
    assert "mix.data_fraction=0.25" in planned and "train.max_iters=8" in planned and "mix.train_tokens=750" in planned
    run(["dvc", "exp", "run", "--run-all"], repo)
    run(["python", "-m", "pipeline.mixsearch", "fit"], repo)
    result = json.loads((repo / "reports/mixsearch.json").read_text())
    assert result["runs"] == 6 and result["mixtures"] == 5 and result["seed_noise_df"] == 1
    assert result["target"] == {"bpb_notes": 1.0, "bpb_records": 1.0}
    assert result["decision"] in ("fitted", "cannot tell") and set(result["recommended"]) == {"notes", "records"}
    assert result["gain_over_uniform"]["low"] <= result["gain_over_uniform"]["mean"] <= result["gain_over_uniform"]["high"]
    assert result["command"].startswith("dvc exp run -S mix.weights.notes=")
    assert (repo / "reports/mixsearch_surface.png").is_file() and "Target: 1 x bpb_notes + 1 x bpb_records" in (repo / "reports/mixsearch.md").read_text()
    queued = run(["python", "-m", "pipeline.mixsearch", "verify", "--seeds", "2", "--dry-run"], repo).stdout
    assert queued.count("dvc exp run --queue -n verify-") >= 4 and "-s8 " in queued and "verify-uniform-" in queued


def test_a_llama_layout_model_trains_through_dvc(clones):
    """`model.arch: llama` is a params change: the same stages train, evaluate and sample it."""
    _, repo = clones
    shape = dict(arch="llama", n_layer=2, n_head=4, n_kv_head=2, n_embd=32, intermediate_size=64, rope_theta=10000)
    sets = ["-S", "model.preset=null"] + [a for k, v in shape.items() for a in ("-S", f"+model.{k}={v}")]  # + adds a key
    run(["dvc", "exp", "run", "-n", "llama", *sets, "sample"], repo)
    config = json.loads((repo / "data/model/model_config.json").read_text())
    assert config["arch"] == "llama" and config["n_kv_head"] == 2
    metrics = json.loads((repo / "metrics/eval.json").read_text())
    assert metrics["loss"] < metrics["unigram_loss"], metrics
    assert "note" in (repo / "data/samples.md").read_text()


def test_every_path_a_param_names_is_a_dependency(clones):
    """finetune.data, finetune.init_from and train.init_from are DVC deps of the stages that read
    them: editing the file a param names re-runs its stage (and nothing upstream)."""
    repo, _ = clones
    run(["dvc", "repro"], repo)  # the experiments before left another run's outputs in the workspace
    params = yaml.safe_load((repo / "params.yaml").read_text())
    chat = repo / "corpus" / "chat.jsonl"
    chat.write_text((repo / "data" / "instructions.jsonl").read_text())
    params["finetune"]["data"] = "corpus/chat.jsonl"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(run(["dvc", "repro", "finetune"], repo).stdout) == {"finetune"}
    assert "up to date" in run(["dvc", "status"], repo).stdout
    with chat.open("a") as handle:
        handle.write(json.dumps({"instruction": "Say hi.", "output": "hi"}) + "\n")
    status = run(["dvc", "status", "finetune"], repo).stdout
    assert "corpus/chat.jsonl" in status and "modified" in status
    shutil.copytree(repo / "data" / "model", repo / "corpus" / "start")
    params["train"]["init_from"] = "corpus/start"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "corpus/start" in run(["dvc", "status", "train"], repo).stdout
