"""Compare DVC experiments: per-source and overall validation loss against the mixture weights,
with seed replicates grouped and every difference given with its interval.

`python -m pipeline.compare` reads `dvc exp show --json` and writes into `reports/`:
- `compare.md` and `compare.csv`: one row per setting, i.e. the runs whose params differ only in
  `seed` (mixture shares, val loss and bits per byte per source and overall as mean ± standard
  error, the number of seeds); below the table, each setting against the baseline (`--baseline`,
  default the first listed) with the difference, its 95% interval and a verdict;
- `compare.png`: val loss against the share of one source (`--x`, default the first source), with
  error bars.
A setting run with one seed shows the val-set standard error of its evaluation (`se_*` in
`metrics/eval.json`) and is marked `1 (± val set)`: that error leaves out seed-to-seed noise, which
only replicates (`python -m pipeline.replicate`) measure, so two single runs get no verdict. `dvc plots show` shows the PNG and the CSV too
(top-level `plots` in dvc.yaml).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence


from pipeline.commands import command_parser
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_file
from pipeline.paths import METRICS_DIR, REPORTS_DIR
from pipeline.stats import t975

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
    se: dict[str, float] = field(default_factory=dict)  # val-set standard errors: "loss_<s>", "bpb_<s>" (s: source or "overall")

    @property
    def seed(self):
        return self.params.get("seed")

    @property
    def setting(self) -> str:
        """What the run measures: its params but the seed."""
        return json.dumps({k: v for k, v in self.params.items() if k != "seed"}, sort_keys=True)


def dvc_experiments(repo: Path = Path("."), revs: list[str] | None = None) -> list:
    """The output of `dvc exp show --json` for `repo`: HEAD's experiments, or those of `revs`."""
    command = ["dvc", "exp", "show", "--json"] + [arg for rev in revs or [] for arg in ("--rev", rev)]
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True)
    if result.returncode != 0:
        raise PipelineError(f"dvc exp show failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no output'}")
    return json.loads(result.stdout)


def experiment_names(rows: list) -> set[str]:
    """Names of the experiments in `dvc exp show --json` rows, run or queued."""
    return {exp.get("name") for row in rows for exp in row.get("experiments") or []}


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
    se = {}
    for key, value in metrics.items():
        if key.startswith("se_") and value is not None:
            metric, _, source = key[3:].partition("_")
            se[f"{metric}_{source or 'overall'}"] = value
    shares = {k: w / total for k, w in sorted(weights.items())}
    return [Run(name=name, rev=row["rev"][:7], shares=shares, losses=losses, params=params, bpb=bpb, se=se)]


@dataclass
class Estimate:
    """A metric of one setting: the mean over its seeds and its standard error (over seeds when there
    are two or more, else the val-set error of the one run, None when unknown)."""

    mean: float
    se: float | None
    seeds: int

    def __str__(self) -> str:
        return f"{self.mean:.4f}" + (f" ± {self.se:.4f}" if self.se is not None else "")


@dataclass
class Setting:
    """The runs whose params differ only in the seed."""

    name: str
    runs: list[Run]

    @property
    def params(self) -> dict:
        return self.runs[0].params

    @property
    def shares(self) -> dict[str, float]:
        return self.runs[0].shares

    def values(self, metric: str, source: str) -> dict:
        """{seed: value} of `metric` (loss or bpb) on `source` (or "overall")."""
        return {r.seed: getattr(r, "losses" if metric == "loss" else metric).get(source) for r in self.runs
                if getattr(r, "losses" if metric == "loss" else metric).get(source) is not None}

    def values_sources(self, metric: str) -> list[str]:
        """The sources with a `metric` value in some run, "overall" last."""
        found = {s for r in self.runs for s in getattr(r, "losses" if metric == "loss" else metric)}
        return sorted(found - {"overall"}) + (["overall"] if "overall" in found else [])

    def estimate(self, metric: str, source: str) -> Estimate | None:
        values = list(self.values(metric, source).values())
        if not values:
            return None
        if len(values) == 1:
            run = next(r for r in self.runs if getattr(r, "losses" if metric == "loss" else metric).get(source) is not None)
            return Estimate(values[0], run.se.get(f"{metric}_{source}"), 1)
        return Estimate(statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values)), len(values))


def group_runs(runs: list[Run]) -> list[Setting]:
    """Runs grouped by setting, in listing order; a setting is named after its first run, less a
    replicate's `-s<seed>` suffix. A run whose setting already has its seed (the same params at
    another commit, say) starts a setting of its own, named with its rev if the name is taken."""
    groups: list[Setting] = []
    for run in runs:
        home = next((g for g in groups if g.runs[0].setting == run.setting and run.seed not in {r.seed for r in g.runs}), None)
        if home is None:
            name = re.sub(r"-s\d+$", "", run.name)
            home = Setting(f"{name}@{run.rev}" if name in {g.name for g in groups} else name, [])
            groups.append(home)
        home.runs.append(run)
    return groups


@dataclass
class Difference:
    """`other` minus `base` on one metric and source: mean, 95% half-width, how it was estimated."""

    mean: float
    half: float | None
    how: str  # "paired over N seeds", "unpaired (a and b seeds)", "val-set errors only"

    @property
    def decided(self) -> bool:
        return self.half is not None and abs(self.mean) > self.half


def difference(base: Setting, other: Setting, metric: str, source: str) -> Difference | None:
    """`other` minus `base`: paired by seed when the settings share two or more seeds; else Welch's
    unpaired difference of the means; against a single run, the replicated side's seed spread stands
    for the single run's too; with one seed each there is no seed noise to go by, so no interval."""
    a, b = base.values(metric, source), other.values(metric, source)
    if not a or not b:
        return None
    common = sorted(set(a) & set(b))
    if len(common) >= 2:
        diffs = [b[s] - a[s] for s in common]
        se = statistics.stdev(diffs) / math.sqrt(len(diffs))
        return Difference(statistics.fmean(diffs), t975(len(diffs) - 1) * se, f"paired over {len(diffs)} seeds")
    mean = statistics.fmean(b.values()) - statistics.fmean(a.values())
    if len(a) == 1 and len(b) == 1:
        return Difference(mean, None, "one seed each: seed noise not measured (pipeline.replicate)")
    if len(a) == 1 or len(b) == 1:
        many = list((b if len(a) == 1 else a).values())
        se = statistics.stdev(many) * math.sqrt(1 / len(many) + 1)
        return Difference(mean, t975(len(many) - 1) * se, f"{len(many)} seeds against one, the single run's noise taken as theirs")
    va, vb = statistics.variance(a.values()) / len(a), statistics.variance(b.values()) / len(b)
    if va + vb == 0:
        return Difference(mean, 0.0, f"unpaired ({len(a)} and {len(b)} seeds)")
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return Difference(mean, t975(df) * math.sqrt(va + vb), f"unpaired ({len(a)} and {len(b)} seeds)")


def verdict(base: Setting, other: Setting, metric: str = "bpb") -> str:
    """One line: where `other` is better or worse than `base`, by how much, where the difference is
    within noise, and where it cannot tell (no seed noise measured)."""
    if not base.values_sources(metric) and metric == "bpb":
        metric = "loss"  # evaluations from before bits per byte
    sources = [s for s in base.values_sources(metric) if s in other.values_sources(metric)]
    decided, within, unknown, how = [], [], [], set()
    for source in sources:
        d = difference(base, other, metric, source)
        if d is None:
            continue
        how.add(d.how)
        if d.half is None:
            unknown.append(f"{source} ({d.mean:+.3f})")
        elif d.decided:
            word = "better" if d.mean < 0 else "worse"
            decided.append(f"{word} on {source} by {abs(d.mean):.3f} ± {d.half:.3f} {metric}")
        else:
            within.append(f"{source} ({d.mean:+.3f} ± {d.half:.3f})")
    parts = decided + ([f"on {', '.join(within)} the difference is within noise"] if within else [])
    parts += [f"cannot tell on {', '.join(unknown)}"] if unknown else []
    return f"{other.name} against {base.name}: " + ("; ".join(parts) or "nothing to compare") + f" [{'; '.join(sorted(how))}]"


def table_rows(settings: list[Setting], with_se: bool = False) -> tuple[list[str], list[list]]:
    """One row per setting: mixture shares, then val loss and bpb per source and overall as
    "mean ± s.e." (`with_se`: mean and s.e. in columns of their own, for the CSV)."""
    sources = sorted({s for g in settings for s in g.shares} | {s for g in settings for s in g.values_sources("loss") if s != "overall"})
    columns = [(metric, s) for metric in ("loss", "bpb") for s in sources + ["overall"]]
    header = ["experiment", "seeds", "rev", "tie_weights"] + [f"share_{s}" for s in sources]
    for metric, s in columns:
        header += [f"val_{metric}_{s}"] + ([f"val_{metric}_{s}_se"] if with_se else [])
    rows = []
    for g in settings:
        seeds = len({r.seed for r in g.runs})
        row = [g.name, seeds if with_se or seeds > 1 else "1 (± val set)", ",".join(r.rev for r in g.runs),
               g.params.get("model", {}).get("tie_weights")]
        row += [round(g.shares.get(s, 0.0), 4) for s in sources]
        for metric, s in columns:
            e = g.estimate(metric, s)
            if with_se:
                row += [_round(e.mean) if e else None, _round(e.se) if e else None]
            else:
                row.append(str(e) if e else None)
        rows.append(row)
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


def plot(settings: list[Setting], x_source: str, path: Path) -> None:
    """Val loss per source and overall against the share of `x_source`, with standard-error bars.

    Settings that differ from the first one only in the mixture are joined by lines; settings that
    also change other params (a model setting, say) are drawn as labelled crosses, not on the lines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = _without_mixture(settings[0].params)
    sweep = sorted((g for g in settings if _without_mixture(g.params) == reference), key=lambda g: g.shares.get(x_source, 0.0))
    others = [g for g in settings if _without_mixture(g.params) != reference]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)

    def point(g: Setting, series: str) -> tuple[float, float, float]:
        e = g.estimate("loss", series)
        return g.shares.get(x_source, 0.0), e.mean if e else float("nan"), (e.se or 0.0) if e else 0.0

    for series in sorted({s for g in settings for s in g.values_sources("loss")}, key=lambda s: (s == "overall", s)):
        style = {"color": "black", "linewidth": 2.2} if series == "overall" else {}
        xs, ys, errs = zip(*(point(g, series) for g in sweep)) if sweep else ((), (), ())
        line = ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=f"val loss: {series}", **style)
        for g in others:
            x, y, err = point(g, series)
            ax.errorbar(x, y, yerr=err, marker="x", markersize=9, capsize=3, color=line.lines[0].get_color())
            if series == "overall":
                ax.annotate(g.name, (x, y), textcoords="offset points", xytext=(6, -10))
    ax.set_xlabel(f"share of train tokens from '{x_source}'")
    ax.set_ylabel("validation loss (nats/token), mean ± s.e.")
    ax.set_title("Validation loss against the data mixture (x: runs with other params)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)


def compare(rows: list, out_dir: Path, x_source: str | None = None, include_workspace: bool = False,
            baseline: str | None = None) -> list[Setting]:
    """Write the table (markdown, CSV), the differences against `baseline` (default: the first
    setting) and the plot for the experiments in `rows`; return the settings."""
    settings = group_runs(parse_runs(rows, include_workspace))
    if not settings:
        raise PipelineError("no experiments with metrics/eval.json found (run `dvc exp run` first)")
    x_source = x_source or sorted(settings[0].shares)[0]
    if all(x_source not in g.shares for g in settings):
        raise PipelineError(f"--x: no experiment trains on a source named '{x_source}'")
    names = [g.name for g in settings]
    if baseline is not None and baseline not in names:
        raise PipelineError(f"--baseline: no setting named '{baseline}' (settings: {', '.join(names)})")
    base = settings[names.index(baseline)] if baseline else settings[0]
    header, table = table_rows(settings)
    verdicts = [verdict(base, g) for g in settings if g is not base]
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / "compare.md") as handle:
        handle.write(to_markdown(header, table))
        if verdicts:
            handle.write(f"\nDifferences against {base.name} (95% intervals; bpb):\n\n" + "".join(f"- {v}\n" for v in verdicts))
    with atomic_file(out_dir / "compare.csv") as handle:
        handle.write(to_csv(*table_rows(settings, with_se=True)))
    plot(settings, x_source, out_dir / "compare.png")
    return settings


def build_parser(prog: str = "python -m pipeline.compare") -> argparse.ArgumentParser:
    parser = command_parser(__doc__, prog)
    parser.add_argument("--out", type=Path, default=REPORTS_DIR, help="folder for compare.md/.csv/.png")
    parser.add_argument("--x", help="source whose share is the plot's x axis (default: the first source)")
    parser.add_argument("--workspace", action="store_true", help="also list the uncommitted workspace")
    parser.add_argument("--rev", action="append", help="baseline commit whose experiments to compare (default HEAD; repeatable)")
    parser.add_argument("--baseline", help="the setting every other one is compared with (default: the first listed)")
    return parser


@cli
def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m pipeline.compare") -> None:
    args = build_parser(prog).parse_args(argv)
    settings = compare(dvc_experiments(revs=args.rev), args.out, args.x, args.workspace, args.baseline)
    print((args.out / "compare.md").read_text(), end="")
    runs = sum(len(g.runs) for g in settings)
    print(f"{runs} runs in {len(settings)} settings -> {args.out}/compare.md, compare.csv, compare.png")


if __name__ == "__main__":
    main()
