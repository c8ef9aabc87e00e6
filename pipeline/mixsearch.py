"""Mixture search: proxy runs over sampled mixtures, per-source laws fitted with their noise, a
recommendation with an interval (or an honest "cannot tell"), and a check at full size.

    python -m pipeline.mixsearch plan --runs 16 --seed 0   # queues 16 mixtures + replicated anchors
    dvc exp run --run-all                                  # runs them
    python -m pipeline.mixsearch fit                       # fits, recommends, writes reports/mixsearch.*
    python -m pipeline.mixsearch verify --seeds 3          # queues the check at full size ...
    dvc exp run --run-all && python -m pipeline.mixsearch verify   # ... and reports its winner

- **The target run is your params.yaml.** A proxy is the same run at `--scale` of its steps, of its
  token budget *and of each source's data* (`mix.data_fraction`): every source is repeated as many
  epochs as in the target run, which is what a mixture changes most when a source is small (a
  proxy that sees each source fewer times than the target prefers other mixtures: "repetition
  mismatch"). `--set key=value` changes the proxies further (a smaller `model.preset`, say).
- **plan** queues, as ordinary DVC experiments stopping at `evaluate`, `--runs` mixtures (a grid for
  two sources, a seeded Dirichlet around the current weights for more) at the params' seed (all
  share one seed: their differences are the mixture's, not the seed's), and two anchors, the
  uniform mixture and the current weights, at `--replicates` seeds: they measure the seed noise.
- **fit** averages each mixture's seeds, fits every metric of the target (default: the bits per byte
  of every source, summed) with the law that predicts left-out mixtures best (`pipeline.mixlaws`),
  weighted by seeds, and sums the laws. The recommendation minimises the sum inside the sampled
  range of each share with no source repeated more than `--max-epochs` times. Its predicted gain
  over uniform and over the best observed mixture come with 95% intervals from a parametric
  bootstrap with the measured noise (the anchors' seed noise pooled with the laws' residuals), and
  the intervals hold for every candidate mixture at once (a sup-t band), because the
  recommendation is chosen as the minimum of a noisy fit. When the gain over uniform is not surely
  positive, the report says the proxies cannot tell the mixtures apart and how many runs would.
- **verify** trains the recommended, fitted, uniform and best observed mixtures (those that differ)
  at full size with `--seeds` seeds each (`verify-<label>-<digest of its shares and --set>-s<seed>`),
  and once they have run, reports each one's target (mean ± s.e.), the paired differences with 95%
  intervals, the winner (run it again with the same --set).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import yaml

from pipeline.compare import Run, dvc_experiments, experiment_names, parse_runs
from pipeline.config import PARAMS_FILE, Params, load_params
from pipeline.commands import command_parser
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_file, read_json, write_json
from pipeline.mixlaws import LawFit, Predictor, choose_law, noise_covariance, refits, seed_noise
from pipeline.mixplots import plot_fit, plot_surface
from pipeline.paths import METRICS_DIR, REPORTS_DIR
from pipeline.replicate import exp_command, params_keys
from pipeline.stats import t975

PREFIX = "mixsearch"
MIX_FILE = (METRICS_DIR / "mix.json").as_posix()
REPORT = "mixsearch.json"
VERIFY = "mixsearch_verify"
CANDIDATES = 100_000
DRAWS = 400
BOOTSTRAP_GRID = 5_000  # candidate mixtures the simultaneous interval covers


def sample_mixtures(current: dict[str, float], runs: int, seed: int, concentration: float) -> list[dict[str, float]]:
    """`runs` mixtures (shares summing to 1, rounded to 3 decimals, none below 0.01). Two sources: a
    grid of the first one's share, from 0.05 to 0.95 for seed 0, shifted by a seeded fraction of a
    step for other seeds (so a second plan adds mixtures, not copies)."""
    names = list(current)
    if len(names) < 2:
        raise PipelineError("mix.weights: a mixture search needs at least two sources with a weight")
    if len(names) == 2:
        offset = np.random.default_rng(seed).uniform() if seed else None
        firsts = np.linspace(0.05, 0.95, runs) if offset is None else 0.05 + 0.9 * (np.arange(runs) + offset) / runs
        shares = np.stack([firsts, 1 - firsts], axis=1)
    else:
        base = np.array([current[n] for n in names], dtype=np.float64)
        alpha = np.maximum(concentration * len(names) * base / base.sum(), 0.3)
        shares = np.random.default_rng(seed).dirichlet(alpha, size=runs)
    shares = np.maximum(shares, 0.01)
    shares = shares / shares.sum(axis=1, keepdims=True)
    return [_rounded(dict(zip(names, row))) for row in shares]


def _rounded(shares: dict[str, float]) -> dict[str, float]:
    return {n: round(float(s), 3) for n, s in shares.items()}


def proxy_overrides(params: Params, scale: float, sets: dict[str, str]) -> dict[str, object]:
    """The `-S` changes that turn the target run (params.yaml) into its proxy at `scale`: steps,
    warmup, token budget and each source's data all scaled, so every source repeats as often."""
    train = params.train
    overrides = {
        "mix.train_tokens": max(1, round(scale * params.mix.train_tokens)),
        "mix.data_fraction": round(scale * params.mix.data_fraction, 6),
        "train.max_iters": max(1, round(scale * train.max_iters)),
        "train.warmup_iters": round(scale * train.warmup_iters),
        "train.eval_interval": 0, "train.checkpoint_interval": 0, "evaluate.max_blocks": 0,
    }
    overrides.update({k: yaml.safe_load(v) for k, v in sets.items()})
    return overrides


def plan_runs(current: dict[str, float], mixtures: list[dict[str, float]], seed: int, replicates: int,
              overrides: dict, prefix: str, plan_seed: int) -> list[tuple[str, dict]]:
    """(experiment name, -S changes) for every proxy run: the sampled mixtures at `seed`
    (`<prefix>-<plan_seed>-NN`), then the uniform and current mixtures at `replicates` seeds from
    `seed` on (`<prefix>-uniform-s<seed>`: the same names in every plan, so a second plan does not
    run them again)."""
    names = list(current)
    runs = [(f"{prefix}-{plan_seed}-{i:02d}", {**_weights(m), **overrides}) for i, m in enumerate(mixtures)]
    total = sum(current.values())
    anchors = {"uniform": _rounded({n: 1 / len(names) for n in names}), "current": _rounded({n: w / total for n, w in current.items()})}
    if anchors["current"] == anchors["uniform"]:
        del anchors["current"]
    for label, shares in anchors.items():
        runs += [(f"{prefix}-{label}-s{s}", {**_weights(shares), **overrides, "seed": s}) for s in range(seed, seed + replicates)]
    return runs


def _weights(shares: dict[str, float]) -> dict[str, float]:
    return {f"mix.weights.{n}": w for n, w in shares.items()}


def parse_target(text: Optional[str], sources: list[str]) -> dict[str, float]:
    """None -> every source's bits per byte, summed; `bpb_prose` -> {bpb_prose: 1};
    `loss_prose=0.7,loss_code=0.3` -> those weights."""
    if text is None:
        return {f"bpb_{s}": 1.0 for s in sources}
    terms = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        try:
            terms[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise PipelineError(f"--target: weight of '{name}' is not a number: {weight!r}") from None
    return terms


def metric_values(run: Run, terms: dict[str, float]) -> Optional[list[float]]:
    """The value of each target term in one run's eval metrics (None when one is missing)."""
    metrics = {"loss": run.losses.get("overall"), "bpb": run.bpb.get("overall"),
               **{f"loss_{k}": v for k, v in run.losses.items()}, **{f"bpb_{k}": v for k, v in run.bpb.items()}}
    values = [metrics.get(name) for name in terms]
    return None if any(v is None for v in values) else [float(v) for v in values]


@dataclass
class Mixture:
    """One mixture's proxy runs: its shares and the target terms of each seed (rows)."""

    shares: np.ndarray
    names: list[str]  # experiment names
    values: np.ndarray  # (seeds, terms)

    @property
    def seeds(self) -> int:
        return len(self.values)


def group_mixtures(runs: list[Run], sources: list[str], terms: dict[str, float]) -> list[Mixture]:
    """Runs with the same shares (to 3 decimals) form one mixture, in listing order; a second run of
    the same mixture and seed is the same run again (identical params), not a replicate, and is left out."""
    groups: dict[tuple, Mixture] = {}
    seen: set[tuple] = set()
    for run in runs:
        shares = np.array([run.shares.get(n, 0.0) for n in sources])
        key = tuple(np.round(shares, 3))
        if (key, run.seed) in seen:
            continue
        seen.add((key, run.seed))
        values = np.array([metric_values(run, terms)])
        if key in groups:
            groups[key].names.append(run.name)
            groups[key].values = np.vstack([groups[key].values, values])
        else:
            groups[key] = Mixture(shares, [run.name], values)
    return list(groups.values())


def check_one_setting(runs: list[Run], prefix: str) -> None:
    """Proxy runs fitted together must differ only in their mixture and seed."""
    def rest(run: Run) -> dict:
        return {k: v for k, v in run.params.items() if k not in ("seed", "mix")} | {"mix": {k: v for k, v in run.params.get("mix", {}).items() if k != "weights"}}

    first = rest(runs[0])
    for run in runs[1:]:
        other = rest(run)
        if other != first:
            key = next(k for k in sorted(set(first) | set(other)) if first.get(k) != other.get(k))
            raise PipelineError(f"{run.name}: its params differ from {runs[0].name}'s in '{key}', not only in the mixture and seed; "
                                f"fit one plan at a time (--prefix)")


@dataclass
class Gain:
    """The predicted gain of the recommendation over another mixture (positive: the recommendation
    is better) and its 95% interval."""

    mean: float
    low: float
    high: float

    @property
    def sure(self) -> bool:
        return self.low > 0

    def __str__(self) -> str:
        return f"{self.mean:+.4f} (95% interval {self.low:+.4f} to {self.high:+.4f})"


def combine(predictors: list[Predictor], weights: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """The target at `shares`: the weighted sum of each metric's law."""
    return np.column_stack([p(shares) for p in predictors]) @ weights


def simultaneous_gains(fits: list[LawFit], weights: np.ndarray, r: np.ndarray, seeds: np.ndarray, cov: np.ndarray,
                       df: int, bases: np.ndarray, grid: np.ndarray, seed: int) -> list[Gain]:
    """The gain of `grid[0]` (the recommendation) over each of `bases`, with a 95% interval that
    holds for every mixture of `grid` at once (a sup-t band over parametric bootstrap refits).

    The recommendation is the minimum of a noisy fit, so an interval for a fixed mixture would be
    too sure of it: on a flat truth, the fit's tilt alone makes its optimum look better than
    uniform. A band that covers the gain of every candidate at once covers the chosen one too."""
    truth = combine([f.predict for f in fits], weights, np.vstack([bases, grid]))
    deviations = np.empty((DRAWS, len(bases), len(grid)))
    for b, (_, predictors) in enumerate(refits(fits, r, seeds, cov, df, DRAWS, np.random.default_rng(seed))):
        off = combine(predictors, weights, np.vstack([bases, grid])) - truth
        deviations[b] = off[: len(bases), None] - off[None, len(bases) :]
    sd = deviations.std(axis=0) + 1e-12
    critical = np.quantile(np.abs(deviations / sd).max(axis=2), 0.95, axis=0)
    gains = []
    for j in range(len(bases)):
        apparent = float(truth[j] - truth[len(bases)])
        half = float(critical[j] * sd[j, 0])
        gains.append(Gain(apparent, apparent - half, apparent + half))
    return gains


def candidates(k: int, low: np.ndarray, high: np.ndarray, seed: int) -> np.ndarray:
    """Mixtures inside [low, high] per share: a fine grid for two sources, Dirichlet samples otherwise."""
    if k == 2:
        first = np.linspace(0, 1, 10_001)
        grid = np.stack([first, 1 - first], axis=1)
    else:
        grid = np.random.default_rng(seed).dirichlet(np.ones(k), size=CANDIDATES)
    grid = grid[np.all((grid >= low - 1e-9) & (grid <= high + 1e-9), axis=1)]
    if len(grid) == 0:
        raise PipelineError("fit: no mixture satisfies the bounds (sampled range and --max-epochs); loosen --max-epochs")
    return grid


def search(rows: list, target: Optional[str], prefix: str, max_epochs: float, out_dir: Path, seed: int = 0) -> dict:
    """Fit the proxy runs named `<prefix>-...` in `rows` (`dvc exp show --json`), recommend, write the report."""
    runs = [r for r in parse_runs(rows) if r.name.startswith(prefix + "-")]
    if not runs:
        raise PipelineError(f"no finished experiments named '{prefix}-*' (run the plan first)")
    sources = sorted({s for r in runs for s in r.shares})
    terms = parse_target(target, sources)
    runs = [r for r in runs if metric_values(r, terms) is not None]
    if not runs:
        raise PipelineError(f"no finished experiments named '{prefix}-*' with {', '.join(terms)}")
    check_one_setting(runs, prefix)
    mixtures = group_mixtures(runs, sources, terms)
    r = np.array([m.shares for m in mixtures])
    seeds = np.array([m.seeds for m in mixtures])
    means = np.array([m.values.mean(axis=0) for m in mixtures])
    try:
        fits = [choose_law(r, means[:, j], seeds) for j in range(len(terms))]
    except ValueError as exc:
        raise PipelineError(f"fit: {exc}; plan more runs") from None
    weights = np.array(list(terms.values()))
    groups = [m.values for m in mixtures]
    seed_sd, seed_df = seed_noise(groups)
    residuals = (means - np.column_stack([f.predict(r) for f in fits])) * np.sqrt(seeds)[:, None]
    spare = len(mixtures) - max(f.law.parameters(len(sources)) for f in fits)
    cov, df = noise_covariance(groups, residuals, spare)

    def predict(shares: np.ndarray) -> np.ndarray:
        return combine([f.predict for f in fits], weights, shares)

    low, high = _bounds(rows, runs, sources, r, max_epochs)
    grid = candidates(len(sources), low, high, seed)
    fitted_values = predict(grid)
    best_rec = grid[int(np.argmin(fitted_values))]
    observed = means @ weights
    best_obs = int(np.argmin(observed))
    uniform = np.full(len(sources), 1 / len(sources))
    band = np.vstack([best_rec, grid[:: max(1, len(grid) // BOOTSTRAP_GRID)]])
    over_uniform, over_best = simultaneous_gains(fits, weights, r, seeds, cov, df, np.stack([uniform, r[best_obs]]), band, seed)
    loo = np.column_stack([f.loo for f in fits]) @ weights
    result = {
        "target": terms, "runs": len(runs), "mixtures": len(mixtures), "sources": sources,
        "laws": {name: {"law": f.law.name, "loo_rmse": f.loo_rmse, "residual_sd": f.residual_sd,
                        "seed_sd": None if seed_sd is None else float(seed_sd[j]), "noise_sd": float(np.sqrt(cov[j, j]))}
                 for j, (name, f) in enumerate(zip(terms, fits))},
        "seed_noise_df": seed_df, "noise_df": df,
        "target_noise_sd": float(np.sqrt(weights @ cov @ weights)),
        "loo_rmse": float(np.sqrt(np.mean(seeds * (loo - observed) ** 2))), "loo_spearman": spearman(loo, observed),
        "target_spread": float(observed.max() - observed.min()),
        "fitted": {"shares": _rounded(dict(zip(sources, best_rec))), "predicted_target": float(predict(best_rec[None])[0])},
        "uniform": {"shares": _rounded(dict(zip(sources, uniform))), "predicted_target": float(predict(uniform[None])[0])},
        "best_observed": {"name": mixtures[best_obs].names[0], "shares": _rounded(dict(zip(sources, r[best_obs]))),
                          "target": float(observed[best_obs]), "seeds": int(seeds[best_obs])},
        "gain_over_uniform": vars(over_uniform), "gain_over_best_observed": vars(over_best),
    }
    result.update(decide(over_uniform, over_best, result, len(mixtures)))
    result["command"] = "dvc exp run " + " ".join(f"-S mix.weights.{n}={w}" for n, w in result["recommended"].items())
    write_report(result, mixtures, observed, loo, out_dir)
    plot_fit(observed, loo, out_dir / "mixsearch_fit.png")
    plot_surface(sources, r, observed, predict, np.array([result["recommended"][n] for n in sources]), out_dir / "mixsearch_surface.png")
    return result


def decide(over_uniform: Gain, over_best: Gain, result: dict, mixtures: int) -> dict:
    """The recommendation and the sentence that justifies it."""
    fitted, best = result["fitted"]["shares"], result["best_observed"]["shares"]
    if over_uniform.sure:
        tail = (f" and than the best observed mixture by {over_best}" if over_best.sure else
                f"; against the best observed mixture ({over_best}) the proxies cannot tell, so either will do")
        return {"decision": "fitted", "recommended": fitted,
                "verdict": f"Recommended: the fitted optimum, predicted better than uniform by {over_uniform}{tail}."}
    half = (over_uniform.high - over_uniform.low) / 2
    needed = mixtures * (half / over_uniform.mean) ** 2 if over_uniform.mean > 0 else None
    more = (f"the interval would exclude zero with about {int(np.ceil(needed))} mixtures at this noise (the half-width "
            f"falls as 1/sqrt(runs)), or with proxies whose seed noise is smaller" if needed else
            "the fit predicts no gain at all, so more runs of these proxies would not find one")
    return {"decision": "cannot tell", "recommended": best,
            "verdict": (f"Cannot tell: the proxies cannot tell these mixtures apart. The fitted optimum is predicted better "
                        f"than uniform by {over_uniform}, an interval that includes zero: the noise of one proxy run "
                        f"(sd {result['target_noise_sd']:.4f} on the target) is as large as the mixture's effect. "
                        f"Keep uniform or the best observed mixture ({result['best_observed']['name']}); {more}.")}


def _bounds(rows: list, runs: list[Run], sources: list[str], r: np.ndarray, max_epochs: float) -> tuple[np.ndarray, np.ndarray]:
    """Each share's sampled range, capped so that no source repeats more than `max_epochs` times."""
    low, high = r.min(axis=0), r.max(axis=0)
    available = _available_tokens(rows, runs, sources)
    if available is not None:
        high = np.minimum(high, max_epochs * available["tokens"] / available["train_tokens"])
        low = np.where(low > high, 0.0, low)  # the repetition bound wins over the sampled range
    return low, high


def _available_tokens(rows: list, runs: list[Run], names: list[str]) -> Optional[dict]:
    """Train tokens each source offers (from a run's metrics/mix.json) and the mixture's budget."""
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


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def write_report(result: dict, mixtures: list[Mixture], observed: np.ndarray, loo: np.ndarray, out_dir: Path) -> None:
    """`mixsearch.md` and `mixsearch.json` (the plots are written beside them)."""
    names = result["sources"]
    target = " + ".join(f"{w:g} x {n}" for n, w in result["target"].items())
    lines = ["# Mixture search", "", f"Target: {target}, over {result['runs']} proxy runs of {result['mixtures']} mixtures.", "",
             f"**{result['verdict']}**", "", "```", result["command"], "```", "",
             "| metric | law (best leave-one-out) | LOO RMSE per law | residual sd | seed sd | noise sd (pooled) |",
             "|---|---|---|---:|---:|---:|"]
    for name, law in result["laws"].items():
        tried = ", ".join(f"{k} {v:.4f}" for k, v in law["loo_rmse"].items())
        seed_sd = "not measured" if law["seed_sd"] is None else f"{law['seed_sd']:.4f}"
        lines.append(f"| {name} | {law['law']} | {tried} | {law['residual_sd']:.4f} | {seed_sd} | {law['noise_sd']:.4f} |")
    lines += ["", f"Target: leave-one-out RMSE {result['loo_rmse']:.4f} (one run), rank correlation {result['loo_spearman']:.2f}; "
              f"the observed target spans {result['target_spread']:.4f}; noise of one run {result['target_noise_sd']:.4f} "
              f"(the replicates' seed noise, {result['seed_noise_df']} degrees of freedom, pooled with the laws' residuals: "
              f"{result['noise_df']} in all).", "",
              "| mixture | " + " | ".join(names) + " | predicted target |", "|---|" + "---:|" * (len(names) + 1)]
    for label in ("fitted", "uniform"):
        row = result[label]
        lines.append(f"| {label} | " + " | ".join(f"{row['shares'][n]:.3f}" for n in names) + f" | {row['predicted_target']:.4f} |")
    lines += ["", f"Gain of the fitted optimum over uniform: {_gain_text(result['gain_over_uniform'])}; over the best observed "
              f"mixture: {_gain_text(result['gain_over_best_observed'])} (predicted; positive is better).", "",
              "| runs | seeds | " + " | ".join(f"share {n}" for n in names) + " | observed target | leave-one-out prediction |",
              "|---|---:|" + "---:|" * (len(names) + 2)]
    for m, value, predicted in zip(mixtures, observed, loo):
        label = m.names[0] if m.seeds == 1 else f"{m.names[0]} (+{m.seeds - 1})"
        lines.append(f"| {label} | {m.seeds} | " + " | ".join(f"{s:.3f}" for s in m.shares) + f" | {value:.4f} | {predicted:.4f} |")
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / "mixsearch.md") as handle:
        handle.write("\n".join(lines) + "\n\n![fit](mixsearch_fit.png)\n\n![surface](mixsearch_surface.png)\n")
    write_json(out_dir / REPORT, result)


def _gain_text(g: dict) -> str:
    return str(Gain(**g))


# ---- verify: the recommendation, uniform and the best observed mixture at full size ----

def verify_candidates(report: dict) -> dict[str, dict[str, float]]:
    """label -> shares of the mixtures to train at full size (duplicates dropped, first label kept)."""
    found: dict[str, dict[str, float]] = {}
    for label, shares in (("recommended", report["recommended"]), ("fitted", report["fitted"]["shares"]),
                          ("uniform", report["uniform"]["shares"]), ("best-observed", report["best_observed"]["shares"])):
        if shares not in found.values():
            found[label] = shares
    return found


def verify_runs(report: dict, seed: int, seeds: int, sets: dict[str, str]) -> list[tuple[str, dict]]:
    """(name, -S changes) of each candidate at each seed: `verify-<label>-<digest>-s<seed>`, the
    digest of its changes less the seed (shares and --set), so a new fit's candidates, or the same
    ones with other settings, never take older runs for theirs."""
    return [(f"{name}-s{s}", {**changes, "seed": s}) for label, (name, changes) in _verify_settings(report, sets).items()
            for s in range(seed, seed + seeds)]


def _verify_settings(report: dict, sets: dict[str, str]) -> dict[str, tuple[str, dict]]:
    """Per candidate label: the name of its runs without the seed, and their -S changes."""
    extra = {k: yaml.safe_load(v) for k, v in sets.items()}
    out = {}
    for label, shares in verify_candidates(report).items():
        changes = {**_weights(shares), **extra}
        digest = hashlib.sha1(json.dumps(changes, sort_keys=True).encode()).hexdigest()[:6]
        out[label] = (f"verify-{label}-{digest}", changes)
    return out


def verify_report(rows: list, report: dict, sets: dict[str, str], out_dir: Path) -> Optional[dict]:
    """Each candidate's target over its finished seeds, the paired differences and the winner; None
    when fewer than two candidates have two finished seeds."""
    terms = report["target"]
    weights = np.array(list(terms.values()))
    values: dict[str, dict[int, float]] = {}
    by_name = {name: label for label, (name, _) in _verify_settings(report, sets).items()}
    for run in parse_runs(rows):
        name, _, seed = run.name.rpartition("-s")
        found = metric_values(run, terms)
        if name in by_name and seed.isdigit() and found is not None:
            values.setdefault(by_name[name], {})[int(seed)] = float(np.array(found) @ weights)
    labels = [label for label in verify_candidates(report) if len(values.get(label, {})) >= 2]
    if len(labels) < 2:
        return None
    summary = {label: {"mean": float(np.mean(list(values[label].values()))), "seeds": len(values[label]),
                       "se": float(np.std(list(values[label].values()), ddof=1) / np.sqrt(len(values[label])))} for label in labels}
    winner = min(labels, key=lambda label: summary[label]["mean"])
    differences = {}
    for other in labels:
        if other != winner:
            common = sorted(set(values[winner]) & set(values[other]))
            diffs = np.array([values[other][s] - values[winner][s] for s in common])
            half = t975(len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs)) if len(diffs) >= 2 else None
            differences[other] = {"mean": float(diffs.mean()), "half": None if half is None else float(half), "seeds": len(diffs)}
    verdict = _verify_verdict(winner, differences)
    result = {"target": terms, "candidates": {label: verify_candidates(report)[label] for label in labels}, "summary": summary,
              "winner": winner, "differences": differences, "verdict": verdict}
    _write_verify(result, out_dir)
    return result


def _verify_verdict(winner: str, differences: dict) -> str:
    """`<winner> wins: better than A by d ± h; within noise of B (+d ± h)`."""
    def text(label: str, signed: bool) -> str:
        d = differences[label]
        if d["half"] is None:
            return f"{label} (one common seed: no interval)"
        return f"{label} ({d['mean']:+.4f} ± {d['half']:.4f})" if signed else f"{label} by {d['mean']:.4f} ± {d['half']:.4f}"

    sure = [o for o, d in differences.items() if d["half"] is not None and d["mean"] > d["half"]]
    unsure = [o for o in differences if o not in sure]
    verdict = f"{winner} wins" + (": better than " + ", ".join(text(o, False) for o in sure) if sure else "")
    if unsure:
        verdict += ("; " if sure else ", but ") + "within noise of " + ", ".join(text(o, True) for o in unsure)
    return verdict + " (target, lower is better; paired by seed, 95% intervals)"


def _write_verify(result: dict, out_dir: Path) -> None:
    names = sorted(next(iter(result["candidates"].values())))
    lines = ["# Mixture search: verified at full size", "", f"**{result['verdict']}**", "",
             "| mixture | " + " | ".join(names) + " | seeds | target (mean ± s.e.) |", "|---|" + "---:|" * (len(names) + 2)]
    for label, shares in result["candidates"].items():
        s = result["summary"][label]
        lines.append(f"| {label} | " + " | ".join(f"{shares[n]:.3f}" for n in names) + f" | {s['seeds']} | {s['mean']:.4f} ± {s['se']:.4f} |")
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / f"{VERIFY}.md") as handle:
        handle.write("\n".join(lines) + "\n")
    write_json(out_dir / f"{VERIFY}.json", result)


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
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PipelineError(f"--set: expected key=value, got {pair!r}")
        overrides[key] = value
    return overrides


def queue(runs: list[tuple[str, dict]], dry_run: bool) -> int:
    """Queue each (name, changes) as `dvc exp run --queue ... evaluate` unless an experiment has the
    name already; return how many were queued."""
    known = set() if dry_run else experiment_names(dvc_experiments())
    present = params_keys()
    queued = 0
    for name, changes in runs:
        command = exp_command(name, changes, present=present) + ["evaluate"]
        if name in known:
            continue
        print(" ".join(command))
        if not dry_run:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise PipelineError(f"dvc exp run --queue -n {name}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}")
        queued += 1
    return queued


def build_parser(prog: str = "python -m pipeline.mixsearch") -> argparse.ArgumentParser:
    parser = command_parser(__doc__, prog)
    sub = parser.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="queue proxy experiments over sampled mixtures")
    plan.add_argument("--runs", type=int, default=16, help="sampled mixtures (default 16), besides the anchors")
    plan.add_argument("--seed", type=int, default=0, help="seed of the mixture sample (the runs use the params' seed)")
    plan.add_argument("--scale", type=float, default=0.25, help="proxy steps, tokens and data as a share of the target run's (default 0.25)")
    plan.add_argument("--replicates", type=int, default=3, help="seeds of the uniform and current mixtures (default 3; 1: no noise measured)")
    plan.add_argument("--concentration", type=float, default=2.0, help="Dirichlet concentration per source (3+ sources)")
    plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a further proxy change, e.g. model.preset=cpu-small")
    plan.add_argument("--dry-run", action="store_true", help="print the commands instead of queueing them")
    fitting = sub.add_parser("fit", help="fit the finished proxy runs and recommend a mixture")
    fitting.add_argument("--target", help="a metric of metrics/eval.json, or name=weight,... (default: every source's bpb, summed)")
    fitting.add_argument("--max-epochs", type=float, default=16.0, help="at most this many passes over any source (default 16)")
    verify = sub.add_parser("verify", help="train the recommendation, uniform and the best observed mixture at full size; report")
    verify.add_argument("--seeds", type=int, default=3, help="seeds per mixture (default 3)")
    verify.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a change to the target run")
    verify.add_argument("--dry-run", action="store_true", help="print the commands instead of queueing them")
    for command in (plan, fitting):
        command.add_argument("--prefix", default=PREFIX, help="experiment name prefix (default mixsearch)")
    return parser


@cli
def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m pipeline.mixsearch") -> None:
    args = build_parser(prog).parse_args(argv)
    if args.command == "plan":
        return _plan(args)
    if args.command == "verify":
        return _verify(args)
    if args.max_epochs <= 0:
        raise PipelineError(f"--max-epochs must be > 0, got {args.max_epochs}")
    result = search(dvc_experiments(), args.target, args.prefix, args.max_epochs, REPORTS_DIR)
    log_to_wandb(result, REPORTS_DIR)
    print(result["verdict"])
    print(f"report: {REPORTS_DIR / 'mixsearch.md'}\nnext: python -m pipeline.mixsearch verify  (or: {result['command']})", file=sys.stderr)


def _plan(args: argparse.Namespace) -> None:
    if not 0 < args.scale <= 1:
        raise PipelineError(f"--scale must be in (0, 1], got {args.scale}")
    if args.replicates < 1:
        raise PipelineError(f"--replicates must be >= 1, got {args.replicates}")
    params = load_params()
    current = {n: w for n, w in params.mix.weights.items() if w > 0}
    if args.runs < len(current) + 2:
        raise PipelineError(f"--runs: {len(current)} sources need at least {len(current) + 2} mixtures to fit, got {args.runs}")
    mixtures = sample_mixtures(current, args.runs, args.seed, args.concentration)
    overrides = proxy_overrides(params, args.scale, parse_sets(args.set))
    runs = plan_runs(current, mixtures, params.seed, args.replicates, overrides, args.prefix, args.seed)
    queued = queue(runs, args.dry_run)
    if not args.dry_run:
        print(f"queued {queued} proxy runs ({len(runs) - queued} already there); run them with `dvc exp run --run-all`, "
              f"then `python -m pipeline.mixsearch fit`")


def _verify(args: argparse.Namespace) -> None:
    if args.seeds < 2:
        raise PipelineError(f"--seeds must be >= 2 to give an interval, got {args.seeds}")
    path = REPORTS_DIR / REPORT
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run `python -m pipeline.mixsearch fit` first")
    if not Path(PARAMS_FILE).is_file():
        raise PipelineError(f"{PARAMS_FILE}: file not found (run from the project's root)")
    report = read_json(path)
    sets = parse_sets(args.set)
    queued = queue(verify_runs(report, load_params().seed, args.seeds, sets), args.dry_run)
    if queued or args.dry_run:
        if not args.dry_run:
            print(f"queued {queued} full-size runs; run them with `dvc exp run --run-all`, then `python -m pipeline.mixsearch verify` again")
        return
    result = verify_report(dvc_experiments(), report, sets, REPORTS_DIR)
    if result is None:
        raise PipelineError("verify: fewer than two mixtures have two finished seeds; run `dvc exp run --run-all` first")
    print(result["verdict"])
    print(f"report: {REPORTS_DIR / VERIFY}.md", file=sys.stderr)


if __name__ == "__main__":
    main()
