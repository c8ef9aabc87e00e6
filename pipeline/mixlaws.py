"""Laws of a validation metric against the mixture's shares, fitted with noise weights.

A law maps shares r (rows of k shares summing to 1) to a predicted loss. The forms, from the least
to the most flexible:
- `linear`: sum_j b_j r_j (k parameters): Scheffé's first-order mixture model;
- `loglinear`: exp(sum_j t_j r_j) (k): the log-linear model Olmix fits (allenai, 2025);
- `exponential`: c + exp(sum_j t_j r_j) (k + 1): "Data Mixing Laws" (Ye et al. 2024), a floor c
  plus a part that falls exponentially as the helpful shares grow;
- `quadratic`: linear plus sum_{i<j} b_ij r_i r_j (k (k + 1) / 2): Scheffé's second order.
(Since the shares sum to 1, no form needs an intercept of its own.)

Every fit is weighted least squares with weight n_i / sigma^2 for a mixture measured at n_i seeds
(sigma, the noise of one run, is the same for every mixture of a metric, so only n_i matters for the
point fit; sigma matters for the intervals). `choose_law` keeps the form with the smallest weighted
leave-one-out error (each mixture predicted by the fit on the others): more parameters win only when
they predict unseen mixtures better.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

Predictor = Callable[[np.ndarray], np.ndarray]


def _wls(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    root = np.sqrt(w)
    return np.linalg.lstsq(X * root[:, None], y * root, rcond=None)[0]


def scheffe(shares: np.ndarray) -> np.ndarray:
    """Second-order Scheffé terms of (n, k) shares: the k shares, then r_i * r_j for i < j."""
    pairs = [shares[:, i] * shares[:, j] for i, j in itertools.combinations(range(shares.shape[1]), 2)]
    return np.column_stack([shares] + pairs)


def fit_linear(r: np.ndarray, y: np.ndarray, w: np.ndarray) -> Predictor:
    coef = _wls(r, y, w)
    return lambda s: s @ coef


def fit_quadratic(r: np.ndarray, y: np.ndarray, w: np.ndarray) -> Predictor:
    coef = _wls(scheffe(r), y, w)
    return lambda s: scheffe(s) @ coef


def fit_loglinear(r: np.ndarray, y: np.ndarray, w: np.ndarray) -> Predictor:
    # log y is fitted; var(log y) ~ var(y) / y^2, so the weights carry y^2
    t = _wls(r, np.log(y), w * y**2)
    return lambda s: np.exp(s @ t)


def fit_exponential(r: np.ndarray, y: np.ndarray, w: np.ndarray) -> Predictor:
    """c + exp(r t): the floor c by a grid from just below the best run down to 0 (t then by a
    log-linear fit), polished by damped Gauss-Newton steps on (c, t) together."""
    best = (np.inf, 0.0, np.zeros(r.shape[1]))
    floor = float(y.min())
    for c in floor - floor * np.geomspace(1e-3, 1.0, 48):
        z = y - c
        t = _wls(r, np.log(z), w * z**2)
        sse = float(np.sum(w * (c + np.exp(r @ t) - y) ** 2))
        if sse < best[0]:
            best = (sse, c, t)
    sse, c, t = best
    theta, damping = np.concatenate([[c], t]), 1e-3
    for _ in range(30):
        grown = np.exp(r @ theta[1:])
        J = np.column_stack([np.ones(len(y)), grown[:, None] * r])
        A, g = J.T @ (w[:, None] * J), J.T @ (w * (y - theta[0] - grown))
        step = np.linalg.lstsq(A + damping * np.diag(np.diag(A) + 1e-12), g, rcond=None)[0]
        trial = theta + step
        with np.errstate(over="ignore", invalid="ignore"):
            trial_sse = float(np.sum(w * (trial[0] + np.exp(r @ trial[1:]) - y) ** 2))
        if np.isfinite(trial_sse) and trial_sse < sse:
            theta, sse, damping = trial, trial_sse, damping / 10
            if np.abs(step).max() < 1e-10:
                break
        else:
            damping *= 10
    return lambda s: theta[0] + np.exp(s @ theta[1:])


@dataclass(frozen=True)
class Law:
    name: str
    parameters: Callable[[int], int]  # parameters for k sources
    fit: Callable[[np.ndarray, np.ndarray, np.ndarray], Predictor]


LAWS = {
    "linear": Law("linear", lambda k: k, fit_linear),
    "loglinear": Law("loglinear", lambda k: k, fit_loglinear),
    "exponential": Law("exponential", lambda k: k + 1, fit_exponential),
    "quadratic": Law("quadratic", lambda k: k * (k + 1) // 2, fit_quadratic),
}


def leave_one_out(law: Law, r: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Each mixture's value predicted by the law fitted on the other mixtures."""
    keep = np.ones(len(y), dtype=bool)
    out = np.empty(len(y))
    for i in range(len(y)):
        keep[i] = False
        out[i] = law.fit(r[keep], y[keep], w[keep])(r[i : i + 1])[0]
        keep[i] = True
    return out


@dataclass
class LawFit:
    """One metric's chosen law, its leave-one-out predictions, and every tried law's LOO error."""

    law: Law
    predict: Predictor
    loo: np.ndarray
    loo_rmse: dict[str, float]  # law name -> seed-weighted LOO RMSE (of one run)
    residual_sd: float  # the chosen fit's residual error of one run, corrected for its parameters


def usable_laws(runs: int, k: int, positive: bool) -> list[Law]:
    """The laws with at least two spare mixtures for leave-one-out (log forms need positive values)."""
    logs = ("loglinear", "exponential")
    return [law for law in LAWS.values() if runs >= law.parameters(k) + 2 and (positive or law.name not in logs)]


def choose_law(r: np.ndarray, y: np.ndarray, seeds: np.ndarray, laws: list[Law] | None = None) -> LawFit:
    """Fit every usable law (weights: seeds per mixture) and keep the best by leave-one-out error."""
    k = r.shape[1]
    laws = laws if laws is not None else usable_laws(len(y), k, bool(np.all(y > 0)))
    if not laws:
        need = min(law.parameters(k) for law in LAWS.values()) + 2
        raise ValueError(f"{len(y)} mixtures for {k} sources; the simplest law needs {need}")
    w = seeds.astype(np.float64)
    scores, loos = {}, {}
    for law in laws:
        loos[law.name] = leave_one_out(law, r, y, w)
        scores[law.name] = float(np.sqrt(np.mean(w * (loos[law.name] - y) ** 2)))
    best = LAWS[min(scores, key=scores.get)]
    predict = best.fit(r, y, w)
    spare = max(len(y) - best.parameters(k), 1)
    residual_sd = float(np.sqrt(np.sum(w * (predict(r) - y) ** 2) / spare))
    return LawFit(best, predict, loos[best.name], scores, residual_sd)


def noise_covariance(groups: list[np.ndarray], residuals: np.ndarray, spare: int) -> tuple[np.ndarray, int]:
    """The noise of one run, as a covariance across the metrics, and its degrees of freedom: the
    scatter of the replicate groups about their means ((n_g, m) arrays, one row per seed: seed noise)
    pooled with the fits' residuals ((mixtures, m), each scaled to one run; `spare` degrees of
    freedom: seed noise plus whatever the laws miss, so a law that misses the data cannot look sure)."""
    scatter = residuals.T @ residuals
    df = spare
    for g in groups:
        if len(g) > 1:
            centred = g - g.mean(axis=0)
            scatter = scatter + centred.T @ centred
            df += len(g) - 1
    return scatter / max(df, 1), df


def seed_noise(groups: list[np.ndarray]) -> tuple[np.ndarray | None, int]:
    """Each metric's seed-to-seed sd over the replicate groups, and its degrees of freedom."""
    df = sum(len(g) - 1 for g in groups if len(g) > 1)
    if df == 0:
        return None, 0
    squares = sum(((g - g.mean(axis=0)) ** 2).sum(axis=0) for g in groups if len(g) > 1)
    return np.sqrt(squares / df), df


def refits(fits: list[LawFit], r: np.ndarray, seeds: np.ndarray, cov: np.ndarray, df: int, draws: int,
           rng: np.random.Generator) -> Iterator[tuple[np.ndarray, list[Predictor]]]:
    """Parametric bootstrap: `draws` times, the fitted values plus noise drawn with covariance
    `cov` / seeds (all metrics of a mixture share one draw, as they share its runs), and each
    metric's law refitted to them. `cov` is itself an estimate on `df` degrees of freedom: each draw
    scales it by df / chi2(df), so a noise measured on few runs widens the intervals as it should.
    Yields (values (mixtures, metrics), predictors)."""
    fitted = np.column_stack([f.predict(r) for f in fits])
    w = seeds.astype(np.float64)
    root = np.linalg.cholesky(cov + 1e-12 * np.eye(len(cov)) * max(np.trace(cov), 1e-12))
    for _ in range(draws):
        scale = np.sqrt(max(df, 1) / rng.chisquare(max(df, 1)))
        y = fitted + scale * rng.standard_normal(fitted.shape) @ root.T / np.sqrt(w)[:, None]
        predictors = []
        for m, f in enumerate(fits):
            values = np.clip(y[:, m], 1e-6, None) if f.law.name in ("loglinear", "exponential") else y[:, m]
            predictors.append(f.law.fit(r, values, w))
        yield y, predictors
