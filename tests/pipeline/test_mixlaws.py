"""mixlaws: each law fits its own form, leave-one-out picks the form that generated the data,
the pooled seed covariance, and bootstrap refits whose intervals cover the truth."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.mixlaws import LAWS, choose_law, noise_covariance, refits, seed_noise, usable_laws

SHARES = np.random.default_rng(0).dirichlet(np.ones(3) * 2, size=20)


def exponential(r):
    return 1.2 + np.exp(r @ np.array([0.2, -1.5, 0.4]))


def quadratic(r):
    return 2.0 + 3.0 * ((r - np.array([0.5, 0.2, 0.3])) ** 2).sum(axis=1)


@pytest.mark.parametrize("name, law", [
    ("linear", lambda r: r @ np.array([2.0, 3.0, 1.5])),
    ("loglinear", lambda r: np.exp(r @ np.array([0.7, 1.1, 0.2]))),
    ("exponential", exponential),
    ("quadratic", quadratic),
])
def test_each_law_fits_its_own_form_exactly(name, law):
    y = law(SHARES)
    predict = LAWS[name].fit(SHARES, y, np.ones(len(y)))
    test = np.random.default_rng(1).dirichlet(np.ones(3), size=50)
    assert np.allclose(predict(test), law(test), atol=1e-5), name


@pytest.mark.parametrize("law, expected", [(exponential, {"exponential"}), (quadratic, {"quadratic"})])
def test_leave_one_out_keeps_the_generating_form(law, expected):
    noise = np.random.default_rng(2).normal(0, 1e-4, len(SHARES))
    fit = choose_law(SHARES, law(SHARES) + noise, np.ones(len(SHARES), dtype=int))
    assert fit.law.name in expected, fit.loo_rmse
    assert fit.loo_rmse[fit.law.name] == min(fit.loo_rmse.values())
    assert fit.residual_sd < 1e-3 and np.abs(fit.loo - law(SHARES)).max() < 0.01


def test_a_law_needs_two_spare_mixtures_and_log_laws_need_positive_values():
    assert [law.name for law in usable_laws(5, 3, True)] == ["linear", "loglinear"]
    assert [law.name for law in usable_laws(8, 3, False)] == ["linear", "quadratic"]
    with pytest.raises(ValueError, match="4 mixtures for 3 sources; the simplest law needs 5"):
        choose_law(SHARES[:4], quadratic(SHARES[:4]), np.ones(4, dtype=int))


def test_weights_follow_the_seeds_per_mixture():
    """A mixture averaged over many seeds pulls the fit harder than one run."""
    r = np.array([[0.2, 0.8], [0.4, 0.6], [0.6, 0.4], [0.8, 0.2]])
    y = np.array([1.0, 2.0, 3.0, 5.0])
    equal = LAWS["linear"].fit(r, y, np.ones(4))(r)
    heavy = LAWS["linear"].fit(r, y, np.array([1.0, 1.0, 1.0, 50.0]))(r)
    assert abs(heavy[3] - 5.0) < abs(equal[3] - 5.0)


def test_noise_pools_the_replicates_and_the_residuals():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])  # deviations +-1, +-1 (df 1)
    b = np.array([[0.0, 0.0], [0.0, 2.0], [0.0, 4.0]])  # second metric: deviations -2, 0, 2 (df 2)
    single = np.array([[9.0, 9.0]])
    sd, df = seed_noise([a, b, single])
    assert df == 3 and sd == pytest.approx(np.sqrt([2.0 / 3, 10.0 / 3]))
    assert seed_noise([single]) == (None, 0)
    residuals = np.array([[0.5, -0.5], [-0.5, 0.5]])
    cov, df = noise_covariance([a, b, single], residuals, spare=2)
    assert df == 5
    assert cov == pytest.approx((np.array([[2.0, 2.0], [2.0, 10.0]]) + np.array([[0.5, -0.5], [-0.5, 0.5]])) / 5)


def test_bootstrap_intervals_cover_the_true_difference():
    """Noisy runs of a known law: the 95% interval of a predicted difference covers the truth in
    most of 20 repeated experiments and is narrower with more seeds."""
    truth = quadratic(np.array([[0.5, 0.2, 0.3], [1 / 3, 1 / 3, 1 / 3]]))
    true_gain = truth[1] - truth[0]
    covered, widths = 0, {}
    for trial in range(20):
        rng = np.random.default_rng(100 + trial)
        for seeds in (1, 4):
            y = quadratic(SHARES) + rng.normal(0, 0.02 / np.sqrt(seeds), len(SHARES))
            counts = np.full(len(SHARES), seeds)
            fit = choose_law(SHARES, y, counts, [LAWS["quadratic"]])
            points = np.array([[0.5, 0.2, 0.3], [1 / 3, 1 / 3, 1 / 3]])
            draws = np.array([p(points) for _, (p,) in refits([fit], SHARES, counts, np.array([[0.02**2]]), 1000, 200, rng)])
            gain = draws[:, 1] - draws[:, 0]
            low, high = np.quantile(gain, [0.025, 0.975])
            widths.setdefault(seeds, []).append(high - low)
            covered += seeds == 1 and low <= true_gain <= high
    assert covered >= 16, covered
    assert np.mean(widths[4]) < 0.7 * np.mean(widths[1])
