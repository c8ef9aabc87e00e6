"""Compare DVC experiments: per-source and overall validation loss against the mixture weights.

`python -m pipeline.compare` reads `dvc exp show --json` and writes into `reports/`:
- `compare.md` and `compare.csv`: one row per experiment (mixture shares, val loss and bits per
  byte per source and overall, tied or untied output layer);
- `compare.png`: val loss against the share of one source (`--x`, default the first source).
`dvc plots show` shows the PNG and the CSV too (top-level `plots` in dvc.yaml).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_file
from pipeline.paths import METRICS_DIR, REPORTS_DIR

EVAL_FILE = (METRICS_DIR / "eval.json").as_posix()


@dataclass
class Run:
    """One experiment (or baseline commit) that has evaluation metrics."""

    name: str
    rev: str
    shares: dict[str, float]  # normalised mixture weights
    losses: dict[str, float]  # val loss per source, and "overall"
    params: dict
    bpb: dict[str, float] = field(default_factory=dict)  # val bits per byte per source, and "overall"


def dvc_experiments(repo: Path = Path("."), revs: list[str] | None = None) -> list:
    """The output of `dvc exp show --json` for `repo`: HEAD's experiments, or those of `revs`."""
    command = ["dvc", "exp", "show", "--json"] + [arg for rev in revs or [] for arg in ("--rev", rev)]
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True)
    if result.returncode != 0:
        raise PipelineError(f"dvc exp show failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no output'}")
    return json.loads(result.stdout)


def parse_runs(rows: list, include_workspace: bool = False) -> list[Run]:
    """Flatten `dvc exp show --json` into the runs that carry eval metrics, in listing order."""
    runs = []
    for row in rows:
        if row["rev"] != "workspace" or include_workspace:
            runs += _run(row.get("name") or row["rev"][:7], row)
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs", []):
                runs += _run(exp.get("name") or rev.get("name") or rev["rev"][:7], rev)
    return runs


def _run(name: str, row: dict) -> list[Run]:
    data = row.get("data") or {}
    metrics = (data.get("metrics") or {}).get(EVAL_FILE, {}).get("data")
    params = (data.get("params") or {}).get("params.yaml", {}).get("data")
    if not metrics or not params or metrics.get("loss") is None:
        return []
    weights = {k: float(v) for k, v in params["mix"]["weights"].items() if float(v) > 0}
    total = sum(weights.values())
    losses = {key[len("loss_"):]: value for key, value in metrics.items() if key.startswith("loss_") and value is not None}
    losses["overall"] = metrics["loss"]
    bpb = {key[len("bpb_"):]: value for key, value in metrics.items() if key.startswith("bpb_") and value is not None}
    if metrics.get("bpb") is not None:
        bpb["overall"] = metrics["bpb"]
    shares = {k: w / total for k, w in sorted(weights.items())}
    return [Run(name=name, rev=row["rev"][:7], shares=shares, losses=losses, params=params, bpb=bpb)]


def table_rows(runs: list[Run]) -> tuple[list[str], list[list]]:
    sources = sorted({s for r in runs for s in r.shares} | {s for r in runs for s in r.losses if s != "overall"})
    header = (
        ["experiment", "rev", "tie_weights"] + [f"share_{s}" for s in sources]
        + [f"val_loss_{s}" for s in sources] + ["val_loss_overall"]
        + [f"val_bpb_{s}" for s in sources] + ["val_bpb_overall"]
    )
    rows = []
    for r in runs:
        rows.append(
            [r.name, r.rev, r.params.get("model", {}).get("tie_weights")]
            + [round(r.shares.get(s, 0.0), 4) for s in sources]
            + [_round(r.losses.get(s)) for s in sources + ["overall"]]
            + [_round(r.bpb.get(s)) for s in sources + ["overall"]]
        )
    return header, rows


def _round(value):
    return None if value is None else round(value, 4)


def to_markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _without_mixture(params: dict) -> dict:
    return {k: v for k, v in params.items() if k != "mix"}


def plot(runs: list[Run], x_source: str, path: Path) -> None:
    """Val loss per source and overall against the share of `x_source`.

    Runs that differ from the first one only in the mixture are joined by lines; runs that also
    change other params (a model setting, say) are drawn as labelled crosses, not on the lines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = _without_mixture(runs[0].params)
    sweep = sorted((r for r in runs if _without_mixture(r.params) == reference), key=lambda r: r.shares.get(x_source, 0.0))
    others = [r for r in runs if _without_mixture(r.params) != reference]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for series in sorted({s for r in runs for s in r.losses}, key=lambda s: (s == "overall", s)):
        style = {"color": "black", "linewidth": 2.2} if series == "overall" else {}
        (line,) = ax.plot([r.shares.get(x_source, 0.0) for r in sweep], [r.losses.get(series) for r in sweep],
                          marker="o", label=f"val loss: {series}", **style)
        for r in others:
            ax.plot(r.shares.get(x_source, 0.0), r.losses.get(series), marker="x", markersize=9, color=line.get_color())
            if series == "overall":
                ax.annotate(r.name, (r.shares.get(x_source, 0.0), r.losses[series]), textcoords="offset points", xytext=(6, -10))
    ax.set_xlabel(f"share of train tokens from '{x_source}'")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("Validation loss against the data mixture (x: runs with other params)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)


def compare(rows: list, out_dir: Path, x_source: str | None = None, include_workspace: bool = False) -> list[Run]:
    """Write the table (markdown, CSV) and the plot for the experiments in `rows`."""
    runs = parse_runs(rows, include_workspace)
    if not runs:
        raise PipelineError("no experiments with metrics/eval.json found (run `dvc exp run` first)")
    x_source = x_source or sorted(runs[0].shares)[0]
    if all(x_source not in r.shares for r in runs):
        raise PipelineError(f"--x: no experiment trains on a source named '{x_source}'")
    header, table = table_rows(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / "compare.md") as handle:
        handle.write(to_markdown(header, table))
    with atomic_file(out_dir / "compare.csv") as handle:
        handle.write(to_csv(header, table))
    plot(runs, x_source, out_dir / "compare.png")
    return runs


@cli
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPORTS_DIR, help="folder for compare.md/.csv/.png")
    parser.add_argument("--x", help="source whose share is the plot's x axis (default: the first source)")
    parser.add_argument("--workspace", action="store_true", help="also list the uncommitted workspace")
    parser.add_argument("--rev", action="append", help="baseline commit whose experiments to compare (default HEAD; repeatable)")
    args = parser.parse_args()
    runs = compare(dvc_experiments(revs=args.rev), args.out, args.x, args.workspace)
    print((args.out / "compare.md").read_text(), end="")
    print(f"{len(runs)} runs -> {args.out}/compare.md, compare.csv, compare.png")


if __name__ == "__main__":
    main()
