"""mixsearch: sampled mixtures, the queued commands, and the fit on synthetic experiment tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.mixsearch import fit, parse_target, plan_commands, recommend, sample_mixtures, search

NAMES = ["code", "docs", "prose"]


def table(mixtures: list[dict[str, float]], law, prefix: str = "mixsearch-0", available=None) -> list:
    """`dvc exp show --json` rows holding one experiment per mixture, its metrics given by `law`."""
    revs = []
    for i, mixture in enumerate(mixtures):
        shares = np.array([mixture[n] for n in NAMES]) / sum(mixture.values())
        losses = law(shares)
        metrics = {"loss": float(losses.mean()), **{f"loss_{n}": float(v) for n, v in zip(NAMES, losses)}}
        mix = {"train_tokens": 1000, "sources": {n: {"available_tokens": (available or {}).get(n, 10**6)} for n in NAMES}}
        revs.append({"rev": f"{i:040d}", "name": f"{prefix}-{i:02d}", "data": {
            "params": {"params.yaml": {"data": {"mix": {"weights": mixture}}}},
            "metrics": {"metrics/eval.json": {"data": metrics}, "metrics/mix.json": {"data": mix}}}})
    return [{"rev": "workspace", "data": {}}, {"rev": "f" * 40, "experiments": [{"revs": [r]} for r in revs]}]


OPTIMUM = np.array([0.5, 0.2, 0.3])


def quadratic(shares):
    """Each source's loss is a bowl with its minimum at OPTIMUM."""
    return 2.0 + np.array([1.0, 2.0, 3.0]) * ((shares - OPTIMUM) ** 2).sum()


def mixing_law(shares):
    """'Data Mixing Laws'-style: each source's loss falls exponentially with its own share."""
    return np.array([2.0, 2.5, 3.0]) + np.exp(-np.array([4.0, 3.0, 5.0]) * shares)


def test_plan_samples_seeded_mixtures_and_queues_dvc_experiments():
    mixtures = sample_mixtures({"code": 0.5, "docs": 0.2, "prose": 0.3}, 16, seed=3, concentration=2.0)
    assert mixtures == sample_mixtures({"code": 0.5, "docs": 0.2, "prose": 0.3}, 16, seed=3, concentration=2.0)
    assert len(mixtures) == 16 and all(abs(sum(m.values()) - 1) < 0.01 and min(m.values()) >= 0.009 for m in mixtures)
    two = sample_mixtures({"code": 0.7, "prose": 0.3}, 5, seed=0, concentration=2.0)
    assert [m["code"] for m in two] == [0.05, 0.275, 0.5, 0.725, 0.95], "two sources: a grid"
    (command,) = plan_commands(two[:1], {"model.preset": "cpu-tiny"}, "mixsearch-0")
    assert command == ["dvc", "exp", "run", "--queue", "-n", "mixsearch-0-00", "-S", "mix.weights.code=0.05", "-S",
                       "mix.weights.prose=0.95", "-S", "model.preset=cpu-tiny", "evaluate"]
    with pytest.raises(PipelineError, match="at least two sources"):
        sample_mixtures({"code": 1.0}, 4, 0, 2.0)


@pytest.mark.parametrize("law, target, tolerance", [(quadratic, "loss", 0.03), (mixing_law, "loss_prose=1,loss_code=1", 0.08)])
def test_fit_recovers_the_minimiser_of_a_known_law(tmp_path, law, target, tolerance):
    mixtures = sample_mixtures({"code": 1, "docs": 1, "prose": 1}, 16, seed=0, concentration=2.0)
    rows = table(mixtures, law)
    result = search(rows, target, "mixsearch", max_epochs=100, out_dir=tmp_path)
    terms = parse_target(target)
    # the true minimiser over the same search space, by brute force on the law itself
    shares = np.array([[m[n] for n in NAMES] for m in mixtures])
    grid = np.random.default_rng(1).dirichlet(np.ones(3), size=100_000)
    grid = grid[np.all((grid >= shares.min(0)) & (grid <= shares.max(0)), axis=1)]
    values = [sum(w * law(s)[NAMES.index(n.split("_")[1])] if "_" in n else w * law(s).mean() for n, w in terms.items()) for s in grid[:20_000]]
    truth = grid[int(np.argmin(values))]
    found = np.array([result["recommended"][n] for n in NAMES])
    assert np.abs(found - truth).max() < tolerance, (found, truth)
    assert result["loo_spearman"] > 0.8 and result["runs"] == 16
    assert result["command"].startswith("dvc exp run -S mix.weights.code=")
    assert (tmp_path / "mixsearch.md").read_text().count("| mixsearch-0-") == 16
    assert (tmp_path / "mixsearch_fit.png").stat().st_size > 0 and (tmp_path / "mixsearch_surface.png").stat().st_size > 0
    assert json.loads((tmp_path / "mixsearch.json").read_text())["recommended"] == result["recommended"]


def test_exact_quadratic_is_fit_exactly():
    shares = np.random.default_rng(0).dirichlet(np.ones(3), size=12)
    y = np.array([quadratic(s)[0] for s in shares])
    model = fit(shares, y)
    assert np.allclose(model.loo_predictions, y, atol=1e-9)
    best, predicted = recommend(model, np.zeros(3), np.ones(3))
    assert np.abs(best - OPTIMUM).max() < 0.01 and predicted == pytest.approx(2.0, abs=1e-4)


def test_repetition_bound_keeps_small_sources_small(tmp_path):
    mixtures = sample_mixtures({"code": 1, "docs": 1, "prose": 1}, 16, seed=0, concentration=2.0)
    rows = table(mixtures, quadratic, available={"docs": 50})  # docs has 50 tokens of a 1000-token budget
    result = search(rows, "loss", "mixsearch", max_epochs=2, out_dir=tmp_path)
    assert result["recommended"]["docs"] <= 0.1 + 1e-3, "2 epochs of 50 tokens is 10% of the budget"


def test_errors_are_one_line(tmp_path):
    rows = table(sample_mixtures({"code": 1, "docs": 1, "prose": 1}, 4, 0, 2.0), quadratic)
    with pytest.raises(PipelineError, match="4 runs for 6 parameters"):
        search(rows, "loss", "mixsearch", 8, tmp_path)
    with pytest.raises(PipelineError, match="no finished experiments named 'other-\\*'"):
        search(rows, "loss", "other", 8, tmp_path)
    with pytest.raises(PipelineError, match="--target: weight of 'loss' is not a number"):
        parse_target("loss=heavy")
