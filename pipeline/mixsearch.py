"""Mixture search: small proxy runs over sampled mixtures, a fitted regression, a recommended mixture.

    python -m pipeline.mixsearch plan --runs 16 --seed 0      # queues 16 proxy experiments
    dvc exp run --run-all                                     # runs them
    python -m pipeline.mixsearch fit --target loss_prose      # fits, recommends, writes reports/mixsearch.*

The idea is RegMix's (Liu et al. 2024: fit a regression from mixture weights to validation loss on
many small proxy runs; the ranking of mixtures transfers to larger models). Every proxy run is an
ordinary DVC experiment (`dvc exp run --queue -S mix.weights.<source>=... -S <proxy overrides>`),
named `<prefix>-<seed>-<i>`, so its params, data hashes and metrics are versioned like any other.

- **plan** samples mixtures: a grid over the share of the first source for two sources, else a
  seeded Dirichlet around the current weights (concentration `--concentration` x the number of
  sources). The proxy overrides (`--set key=value`, default a tiny model and a short budget) go in
  as `-S` params; the queued experiments stop at the `evaluate` stage.
- **fit** reads `dvc exp show --json`, and for the target (a metric of `metrics/eval.json` such as
  `loss_prose`, `loss`, `bpb_code`, or a weighted sum `loss_prose=0.7,loss_code=0.3`) fits
  Scheffé's quadratic mixture model, y = sum_i b_i s_i + sum_{i<j} b_ij s_i s_j, by numpy least
  squares on the shares s (the normalised weights; the mix stage achieves them, repeating small
  sources as needed). Why not LightGBM, as RegMix does: with 12-16 runs a tree model
  has nothing to split on; a quadratic surface has k(k+1)/2 parameters (6 for three sources) and
  is what "Data Mixing Laws" (Ye et al. 2024) approximate locally. Its honesty is checked by
  leave-one-out: each run predicted by the fit on the others. The recommendation minimises the
  prediction over mixtures inside the sampled range of each share (no extrapolation) whose sources
  are repeated at most `--max-epochs` times (OLMo-core's `max_repetition_ratio`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pipeline.compare import Run, dvc_experiments, parse_runs
from pipeline.config import load_params
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_file, write_json
from pipeline.paths import METRICS_DIR, REPORTS_DIR

PREFIX = "mixsearch"
PROXY = {"model.preset": "cpu-tiny", "train.max_iters": "150", "train.eval_interval": "0", "train.checkpoint_interval": "0",
         "evaluate.max_blocks": "0"}
MIX_FILE = (METRICS_DIR / "mix.json").as_posix()
CANDIDATES = 200_000


def sample_mixtures(current: dict[str, float], runs: int, seed: int, concentration: float) -> list[dict[str, float]]:
    """`runs` mixtures (shares summing to 1, rounded to 3 decimals, none below 0.01)."""
    names = list(current)
    if len(names) < 2:
        raise PipelineError("mix.weights: a mixture search needs at least two sources with a weight")
    if len(names) == 2:
        firsts = np.linspace(0.05, 0.95, runs)
        shares = np.stack([firsts, 1 - firsts], axis=1)
    else:
        base = np.array([current[n] for n in names], dtype=np.float64)
        alpha = np.maximum(concentration * len(names) * base / base.sum(), 0.3)
        shares = np.random.default_rng(seed).dirichlet(alpha, size=runs)
    shares = np.maximum(shares, 0.01)
    shares = shares / shares.sum(axis=1, keepdims=True)
    return [{n: round(float(s), 3) for n, s in zip(names, row)} for row in shares]


def plan_commands(mixtures: list[dict[str, float]], overrides: dict[str, str], prefix: str) -> list[list[str]]:
    """One `dvc exp run --queue` command per mixture, stopping at `evaluate`."""
    commands = []
    for i, mixture in enumerate(mixtures):
        sets = [f"mix.weights.{n}={w}" for n, w in mixture.items()] + [f"{k}={v}" for k, v in overrides.items()]
        commands.append(["dvc", "exp", "run", "--queue", "-n", f"{prefix}-{i:02d}"] + [a for s in sets for a in ("-S", s)] + ["evaluate"])
    return commands


def parse_target(text: str) -> dict[str, float]:
    """`loss_prose` -> {loss_prose: 1}; `loss_prose=0.7,loss_code=0.3` -> those weights."""
    terms = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        try:
            terms[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise PipelineError(f"--target: weight of '{name}' is not a number: {weight!r}") from None
    return terms


def target_value(run: Run, terms: dict[str, float]) -> Optional[float]:
    """The target of one run from its eval metrics (None when a term is missing)."""
    metrics = {"loss": run.losses.get("overall"), "bpb": run.bpb.get("overall"),
               **{f"loss_{k}": v for k, v in run.losses.items()}, **{f"bpb_{k}": v for k, v in run.bpb.items()}}
    values = [metrics.get(name) for name in terms]
    return None if any(v is None for v in values) else float(sum(w * v for w, v in zip(terms.values(), values)))


def features(shares: np.ndarray) -> np.ndarray:
    """Scheffé quadratic mixture terms of (n, k) shares: the k shares, then s_i * s_j for i < j."""
    pairs = [shares[:, i] * shares[:, j] for i, j in itertools.combinations(range(shares.shape[1]), 2)]
    return np.column_stack([shares] + pairs)


@dataclass
class Fit:
    coef: np.ndarray
    loo_predictions: np.ndarray  # each run predicted by the fit on the other runs

    def predict(self, shares: np.ndarray) -> np.ndarray:
        return features(shares) @ self.coef


def fit(shares: np.ndarray, y: np.ndarray) -> Fit:
    """Least squares of `y` on the quadratic mixture terms, with leave-one-out predictions."""
    X = features(shares)
    if len(y) <= X.shape[1]:
        raise PipelineError(f"fit: {len(y)} runs for {X.shape[1]} parameters; plan at least {X.shape[1] + 2} runs")
    coef = np.linalg.lstsq(X, y, rcond=None)[0]
    loo = np.array([X[i] @ np.linalg.lstsq(np.delete(X, i, 0), np.delete(y, i), rcond=None)[0] for i in range(len(y))])
    return Fit(coef=coef, loo_predictions=loo)


def recommend(model: Fit, low: np.ndarray, high: np.ndarray, seed: int = 0) -> tuple[np.ndarray, float]:
    """The mixture inside [low, high] per share that minimises the prediction (searched over the
    simplex: a fine grid for two sources, Dirichlet samples otherwise)."""
    k = len(low)
    if k == 2:
        first = np.linspace(0, 1, 10_001)
        candidates = np.stack([first, 1 - first], axis=1)
    else:
        candidates = np.random.default_rng(seed).dirichlet(np.ones(k), size=CANDIDATES)
    inside = np.all((candidates >= low - 1e-9) & (candidates <= high + 1e-9), axis=1)
    if not inside.any():
        raise PipelineError("fit: no mixture satisfies the bounds (sampled range and --max-epochs); loosen --max-epochs")
    candidates = candidates[inside]
    predicted = model.predict(candidates)
    best = int(np.argmin(predicted))
    return candidates[best], float(predicted[best])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def search(rows: list, target: str, prefix: str, max_epochs: float, out_dir: Path) -> dict:
    """Fit the proxy runs named `<prefix>-...` in `rows` (`dvc exp show --json`) and write the report."""
    terms = parse_target(target)
    runs = [r for r in parse_runs(rows) if r.name.startswith(prefix + "-")]
    runs = [r for r in runs if target_value(r, terms) is not None]
    if not runs:
        raise PipelineError(f"no finished experiments named '{prefix}-*' with {', '.join(terms)} (run the plan first)")
    names = sorted({s for r in runs for s in r.shares})
    shares = np.array([[r.shares.get(n, 0.0) for n in names] for r in runs])
    y = np.array([target_value(r, terms) for r in runs])
    model = fit(shares, y)
    low, high = shares.min(axis=0), shares.max(axis=0)
    available = _available_tokens(rows, runs, names)
    if available is not None:
        high = np.minimum(high, max_epochs * available["tokens"] / available["train_tokens"])
        low = np.where(low > high, 0.0, low)  # the repetition bound wins over the sampled range
    weights, predicted = recommend(model, low, high)
    observed_best = runs[int(np.argmin(y))]
    errors = model.loo_predictions - y
    result = {
        "target": terms, "runs": len(runs), "sources": names,
        "recommended": {n: round(float(w), 3) for n, w in zip(names, weights)}, "predicted_target": predicted,
        "best_observed": {"name": observed_best.name, "shares": observed_best.shares, "target": float(y.min())},
        "loo_rmse": float(np.sqrt(np.mean(errors**2))), "loo_max_abs_error": float(np.abs(errors).max()),
        "loo_spearman": spearman(model.loo_predictions, y), "target_spread": float(y.max() - y.min()),
        "coefficients": dict(zip(_feature_names(names), map(float, model.coef))),
    }
    result["command"] = "dvc exp run " + " ".join(f"-S mix.weights.{n}={w}" for n, w in result["recommended"].items())
    write_report(result, runs, shares, y, model, out_dir)
    return result


def _available_tokens(rows: list, runs: list[Run], names: list[str]) -> Optional[dict]:
    """Train tokens each source has (from a run's metrics/mix.json) and the mixture's budget."""
    fitted = {r.rev for r in runs}
    for row in rows:
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs", []):
                if rev.get("rev", "")[:7] not in fitted:
                    continue
                mix = ((rev.get("data") or {}).get("metrics") or {}).get(MIX_FILE, {}).get("data")
                if mix and all(n in mix.get("sources", {}) for n in names):
                    tokens = np.array([mix["sources"][n]["available_tokens"] for n in names], dtype=np.float64)
                    return {"tokens": tokens, "train_tokens": float(mix["train_tokens"])}
    return None


def _feature_names(names: list[str]) -> list[str]:
    return list(names) + [f"{a}*{b}" for a, b in itertools.combinations(names, 2)]


def write_report(result: dict, runs: list[Run], shares: np.ndarray, y: np.ndarray, model: Fit, out_dir: Path) -> None:
    """`mixsearch.md`, `mixsearch.json` and the plots (`mixsearch_fit.png`, `mixsearch_surface.png`)."""
    names = result["sources"]
    target = ", ".join(f"{w:g} x {n}" for n, w in result["target"].items())
    lines = [
        "# Mixture search", "",
        f"Target: {target}, over {result['runs']} proxy runs. Fit: quadratic mixture model (numpy least squares).", "",
        f"Leave-one-out error: RMSE {result['loo_rmse']:.4f}, max {result['loo_max_abs_error']:.4f} "
        f"(the target spans {result['target_spread']:.4f} across runs); rank correlation {result['loo_spearman']:.2f}.", "",
        "Recommended: " + ", ".join(f"{n} {w}" for n, w in result["recommended"].items())
        + f" (predicted {result['predicted_target']:.4f}); best observed: {result['best_observed']['name']} "
        + f"({result['best_observed']['target']:.4f}).", "",
        "```", result["command"], "```", "",
        "| run | " + " | ".join(f"share {n}" for n in names) + " | observed | leave-one-out prediction |",
        "|---|" + "---:|" * (len(names) + 2),
    ]
    for run, row, observed, predicted in zip(runs, shares, y, model.loo_predictions):
        lines.append(f"| {run.name} | " + " | ".join(f"{s:.3f}" for s in row) + f" | {observed:.4f} | {predicted:.4f} |")
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / "mixsearch.md") as handle:
        handle.write("\n".join(lines) + "\n\n![fit](mixsearch_fit.png)\n\n![surface](mixsearch_surface.png)\n")
    write_json(out_dir / "mixsearch.json", result)
    plot_fit(y, model.loo_predictions, out_dir / "mixsearch_fit.png")
    plot_surface(names, shares, y, model, result, out_dir / "mixsearch_surface.png")


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)


def plot_fit(observed: np.ndarray, predicted: np.ndarray, path: Path) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.8, 4.4), dpi=120)
    ax.scatter(observed, predicted)
    ends = [min(observed.min(), predicted.min()), max(observed.max(), predicted.max())]
    ax.plot(ends, ends, color="gray", linestyle="--")
    ax.set_xlabel("observed target")
    ax.set_ylabel("predicted (leave-one-out)")
    ax.set_title("Proxy runs: predicted vs observed")
    _save(plt, fig, path)


def plot_surface(names: list[str], shares: np.ndarray, y: np.ndarray, model: Fit, result: dict, path: Path) -> None:
    """Two sources: the predicted target against the first share. Three or more: a ternary map of
    the first three sources' shares (the rest held at their mean)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5.6, 4.6), dpi=120)
    best = np.array([result["recommended"][n] for n in names])
    if len(names) == 2:
        grid = np.linspace(0, 1, 201)
        ax.plot(grid, model.predict(np.stack([grid, 1 - grid], axis=1)), label="fit")
        ax.scatter(shares[:, 0], y, color="black", label="proxy runs")
        ax.axvline(best[0], color="red", linestyle=":", label="recommended")
        ax.set_xlabel(f"share of {names[0]}")
        ax.set_ylabel("target")
        ax.legend()
    else:
        rest = shares[:, 3:].mean(axis=0) if len(names) > 3 else np.zeros(0)
        free = 1 - rest.sum()
        a, b = np.meshgrid(np.linspace(0, 1, 121), np.linspace(0, 1, 121))
        keep = a + b <= 1
        tri = np.stack([a[keep], b[keep], 1 - a[keep] - b[keep]], axis=1) * free
        grid = np.column_stack([tri, np.tile(rest, (len(tri), 1))])
        x2, y2 = _ternary(tri / free)
        contour = ax.tricontourf(x2, y2, model.predict(grid), levels=20)
        fig.colorbar(contour, ax=ax, label="predicted target")
        px, py = _ternary(shares[:, :3] / shares[:, :3].sum(axis=1, keepdims=True))
        ax.scatter(px, py, color="white", edgecolor="black", label="proxy runs")
        bx, by = _ternary((best[:3] / best[:3].sum())[None, :])
        ax.scatter(bx, by, marker="*", s=160, color="red", label="recommended")
        for (x, yy), label in zip([(0, 0), (1, 0), (0.5, np.sqrt(3) / 2)], names[:3]):
            ax.annotate(label, (x, yy), textcoords="offset points", xytext=(-10, -14 if yy == 0 else 6))
        ax.set_axis_off()
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Predicted target across mixtures", pad=16)
    _save(plt, fig, path)


def _ternary(shares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Barycentric (a, b, c) -> 2-D points of a triangle with a at (0, 0), b at (1, 0), c at the top."""
    return shares[:, 1] + shares[:, 2] / 2, shares[:, 2] * np.sqrt(3) / 2


def log_to_wandb(result: dict, out_dir: Path) -> None:
    """The report's numbers and plots in a W&B run (job type mixsearch) unless W&B is disabled."""
    params = load_params()
    if params.wandb.mode == "disabled":
        return
    import wandb

    from pipeline.paths import WANDB_DIR

    WANDB_DIR.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=params.wandb.project, mode=params.wandb.mode, dir=str(WANDB_DIR), job_type="mixsearch",
                     config={"target": result["target"], "sources": result["sources"]})
    run.summary.update({k: v for k, v in result.items() if isinstance(v, (int, float))})
    run.log({"recommended": result["recommended"], "fit": wandb.Image(str(out_dir / "mixsearch_fit.png")),
             "surface": wandb.Image(str(out_dir / "mixsearch_surface.png"))})
    run.finish()


def parse_sets(pairs: Sequence[str]) -> dict[str, str]:
    overrides = dict(PROXY)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PipelineError(f"--set: expected key=value, got {pair!r}")
        overrides[key] = value
    return overrides


@cli
def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Mixture search over DVC experiments (see the module docstring).")
    sub = parser.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="queue proxy experiments over sampled mixtures")
    plan.add_argument("--runs", type=int, default=16)
    plan.add_argument("--seed", type=int, default=0)
    plan.add_argument("--concentration", type=float, default=2.0, help="Dirichlet concentration per source (3+ sources)")
    plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help=f"proxy override (default: {' '.join(f'{k}={v}' for k, v in PROXY.items())})")
    plan.add_argument("--dry-run", action="store_true", help="print the commands instead of queueing them")
    fitting = sub.add_parser("fit", help="fit the finished proxy runs and recommend a mixture")
    fitting.add_argument("--target", default="loss", help="a metric of metrics/eval.json, or name=weight,... (default: loss)")
    fitting.add_argument("--max-epochs", type=float, default=8.0, help="at most this many passes over any source")
    for command in (plan, fitting):
        command.add_argument("--prefix", default=PREFIX, help="experiment name prefix")
    args = parser.parse_args(argv)
    if args.command == "plan":
        if args.runs < 2:
            raise PipelineError(f"--runs must be >= 2, got {args.runs}")
        current = {n: w for n, w in load_params().mix.weights.items() if w > 0}
        needed = len(current) * (len(current) + 1) // 2 + 2
        if args.runs < needed:
            raise PipelineError(f"--runs: {len(current)} sources need at least {needed} runs to fit ({needed - 2} parameters), got {args.runs}")
        mixtures = sample_mixtures(current, args.runs, args.seed, args.concentration)
        for command in plan_commands(mixtures, parse_sets(args.set), f"{args.prefix}-{args.seed}"):
            print(" ".join(command))
            if not args.dry_run:
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    raise PipelineError(f"dvc exp run --queue failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
        print(f"queued {len(mixtures)} experiments; run them with `dvc exp run --run-all`" if not args.dry_run else "")
        return
    if args.max_epochs <= 0:
        raise PipelineError(f"--max-epochs must be > 0, got {args.max_epochs}")
    result = search(dvc_experiments(), args.target, args.prefix, args.max_epochs, REPORTS_DIR)
    log_to_wandb(result, REPORTS_DIR)
    print(json.dumps({k: result[k] for k in ("recommended", "predicted_target", "loo_rmse", "loo_spearman")}, indent=2))
    print(f"report: {REPORTS_DIR / 'mixsearch.md'}\nnext: {result['command']}", file=sys.stderr)


if __name__ == "__main__":
    main()
