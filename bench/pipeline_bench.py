"""The data pipeline at scale (issue: data at real scale): time, memory and disk of `dvc repro`.

    python bench/pipeline_bench.py --mb 200 1000 [--work DIR] [--nanogpt] [--executor ray] [--json OUT]

For each size, a JSONL corpus from `bench/corpus.py` (two sources, `code` and `prose`, ~3 KB
documents) and a fresh copy of the project whose params read it (GPT-2 BPE, val 1%, context 1024,
concat, a 0.5/0.5 mixture of about one epoch). Then, all through DVC and timed from outside:
- `dvc repro pack` from scratch: wall time per stage (DVC's own work included) and in total, and
  the peak RssAnon of each stage's main process and of its largest worker (heap only: pages of
  memory-mapped files do not count, as the issue asks);
- `dvc status pack` (must be up to date) and a no-op `dvc repro pack`;
- a mixture swap: weights 0.3/0.7, `dvc repro pack`;
- `dvc repro -f pack`: the whole data pipeline again with DVC's hash cache warm;
- disk: `data/` + `.dvc/cache` (hard links counted once) against the token store's bytes;
- with `--nanogpt`, `bench/nanogpt_prepare.py` on the same files (cold datasets cache).
With `--executor ray`, the stages that run tasks (scan, tokenize, dedup) run them on the Ray
cluster `ray start --head` runs on this machine (`executor: {kind: ray, address: auto}`).
Prints a markdown table per size; `--json` also writes every number.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import build_jsonl  # noqa: E402
from harness import ROOT, disk_kb, make_repo, timed  # noqa: E402
from machine import load  # noqa: E402

BYTES_PER_TOKEN = 2.7  # of this corpus with GPT-2's BPE, to size the mixture at about one epoch


def params_for(corpus: Path, mb: float, weights: dict[str, float], executor: str = "local") -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["executor"] = {"kind": executor, "workers": 0, "address": "auto"}
    params["sources"] = {name: {"format": "jsonl", "path": str(corpus / f"{name}.jsonl")} for name in ("code", "prose")}
    params["snapshots"] = {}
    params["tokenizer"] = {"name": "gpt2", "path": "models/README.md"}
    params["split"] = {"val_fraction": 0.01}
    params["mix"] = {"train_tokens": int(0.95 * mb * 1e6 / BYTES_PER_TOKEN), "weights": weights}
    params["pack"] = {"context_length": 1024, "mode": "concat"}
    return params


def store_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "data/tokens").glob("*/tokens-*.bin"))


def bench_size(mb: float, work: Path, nanogpt: bool, executor: str = "local") -> dict:
    corpus = work / f"corpus-{mb:g}"
    if not (corpus / "prose.jsonl").is_file():
        build_jsonl(corpus, mb)
    repo = make_repo(work / f"repo-{mb:g}-{executor}", params_for(corpus, mb, {"code": 0.5, "prose": 0.5}, executor))
    result = {"mb": mb, "executor": executor, "corpus_bytes": sum(p.stat().st_size for p in corpus.glob("*.jsonl")),
              "load_before": load()}
    first = timed(["dvc", "repro", "pack"], repo)
    result["first"] = {"wall": first.wall, "stages": first.stages, "peak_mb": first.peak_mb, "worker_peak_mb": first.worker_peak_mb}
    status = subprocess.run(["dvc", "status", "pack"], cwd=repo, capture_output=True, text=True).stdout
    result["status_after_repro"] = status.strip().splitlines()[:3]
    result["noop_wall"] = timed(["dvc", "repro", "pack"], repo).wall
    forced = timed(["dvc", "repro", "-f", "pack"], repo)
    result["forced"] = {"wall": forced.wall, "stages": forced.stages}
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["mix"]["weights"] = {"code": 0.3, "prose": 0.7}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    swap = timed(["dvc", "repro", "pack"], repo)
    result["swap"] = {"wall": swap.wall, "stages": swap.stages, "peak_mb": swap.peak_mb}
    manifests = {n: json.loads((repo / f"data/tokens/{n}/manifest.json").read_text()) for n in ("code", "prose")}
    result["docs"] = sum(m["docs"] for m in manifests.values())
    result["tokens"] = sum(m["tokens"] for m in manifests.values())
    result["text_bytes"] = sum(m["text_bytes"] for m in manifests.values())
    result["store_bytes"] = store_bytes(repo)
    result["disk_bytes"] = disk_kb(repo / "data", repo / ".dvc/cache") * 1024
    result["index_bytes"] = disk_kb(*(repo / "data" / d for d in ("split", "mix", "packed"))) * 1024
    if nanogpt:
        out = work / f"nanogpt-{mb:g}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        files = [str(corpus / f"{n}.jsonl") for n in ("code", "prose")]
        run = timed([sys.executable, str(ROOT / "bench/nanogpt_prepare.py"), str(out), str(repo / "data/vocab"), *files], repo)
        result["nanogpt"] = {"wall": run.wall, "peak_mb_tree": max([0.0, *run.peak_mb.values()])}
        subprocess.run(["rm", "-rf", str(out)], check=True)
    result["load_after"] = load()
    return result


def report(r: dict) -> str:
    stages = r["first"]["stages"]
    tokenize = sum(v for k, v in stages.items() if k.startswith("tokenize@"))
    split = sum(v for k, v in stages.items() if k.startswith("split@"))
    peak = max(r["first"]["peak_mb"].values())
    worker = max(r["first"]["worker_peak_mb"].values(), default=0.0)
    rows = [
        ("corpus", f"{r['corpus_bytes'] / 1e6:.0f} MB JSONL, {r['docs']:,} documents, {r['tokens'] / 1e6:.1f}M tokens"),
        ("`dvc repro pack`, from scratch", f"{r['first']['wall']:.1f} s (tokenize {tokenize:.1f}, dedup {stages.get('dedup', 0):.1f}, "
         f"split {split:.1f}, mix {stages.get('mix', 0):.1f}, pack {stages.get('pack', 0):.1f}; executor {r.get('executor', 'local')})"),
        ("tokenize throughput (both sources, DVC included)", f"{r['text_bytes'] / 1e6 / tokenize:.1f} MB/s"),
        ("`dvc repro -f pack` (DVC hash cache warm)", f"{r['forced']['wall']:.1f} s"),
        ("mixture swap (`dvc repro pack` after a weight change)", f"{r['swap']['wall']:.2f} s (mix {r['swap']['stages'].get('mix', 0):.2f}, pack {r['swap']['stages'].get('pack', 0):.2f})"),
        ("no-op `dvc repro pack`", f"{r['noop_wall']:.2f} s"),
        ("peak RssAnon, stage main processes", ", ".join(f"{k.split()[0].split('.')[-1]} {v:.0f}" for k, v in sorted(r["first"]["peak_mb"].items())) + " MB"),
        ("peak RssAnon, largest worker", f"{worker:.0f} MB (any stage's main process at most {peak:.0f} MB)"),
        ("token store / `data/` + `.dvc/cache`", f"{r['store_bytes'] / 1e6:.0f} MB / {r['disk_bytes'] / 1e6:.0f} MB = {r['disk_bytes'] / r['store_bytes']:.3f}x "
         f"(split + mix + packed indices: {r['index_bytes'] / 1e6:.1f} MB)"),
        ("`dvc status pack` after the repro", " / ".join(r["status_after_repro"])),
    ]
    if "nanogpt" in r:
        rows.append(("nanoGPT prepare.py recipe, same files", f"{r['nanogpt']['wall']:.1f} s: "
                     f"**{r['nanogpt']['wall'] / r['forced']['wall']:.2f}x** the forced pipeline, {r['nanogpt']['wall'] / r['first']['wall']:.2f}x the first"))
    rows.append(("load average before / after", f"{r['load_before']} / {r['load_after']}"))
    return "\n".join(["| measure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, nargs="+", default=[200, 1000])
    p.add_argument("--work", type=Path, default=Path("/tmp/tinygpt-pipeline-bench"))
    p.add_argument("--nanogpt", action="store_true", help="also time nanoGPT's prepare.py recipe")
    p.add_argument("--executor", choices=("local", "ray"), default="local", help="where scan, tokenize and dedup run their tasks")
    p.add_argument("--json", type=Path, help="write all numbers here")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for mb in args.mb:
        started = time.perf_counter()
        results.append(bench_size(mb, args.work, args.nanogpt, args.executor))
        print(f"\n### {mb:g} MB ({time.perf_counter() - started:.0f} s of benchmark)\n\n{report(results[-1])}\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
