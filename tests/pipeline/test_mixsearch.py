"""mixsearch: the planned proxy runs, the fit on synthetic experiment tables (a real effect, no
effect), and the check at full size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.config import Params
from pipeline.typed import from_dict
from pipeline.errors import PipelineError
from pipeline.mixsearch import (
    parse_target, plan_runs, proxy_overrides, sample_mixtures, search, verify_candidates, verify_report, verify_runs,
)
from pipeline.replicate import exp_command

NAMES = ["code", "docs", "prose"]
OPTIMUM = np.array([0.5, 0.2, 0.3])


def bowl(shares: np.ndarray) -> np.ndarray:
    """Each source's bpb is a bowl with its minimum at OPTIMUM (depth 1, 2, 3)."""
    return 1.5 + np.array([1.0, 2.0, 3.0]) * ((shares - OPTIMUM) ** 2).sum()


def flat(shares: np.ndarray) -> np.ndarray:
    return np.array([1.5, 2.0, 1.3])


def experiment(name: str, mixture: dict, values: np.ndarray, seed: int = 1337, extra: dict | None = None, available=None) -> dict:
    metrics = {"loss": float(values.mean()), "bpb": float(values.mean()),
               **{f"bpb_{n}": float(v) for n, v in zip(NAMES, values)}, **{f"loss_{n}": float(v) for n, v in zip(NAMES, values)}}
    mix = {"train_tokens": 1000, "sources": {n: {"available_tokens": (available or {}).get(n, 10**6)} for n in NAMES}}
    params = {"seed": seed, "mix": {"weights": mixture, "train_tokens": 1000}, **(extra or {})}
    return {"revs": [{"rev": f"{abs(hash((name, seed))):040d}", "name": name, "data": {
        "params": {"params.yaml": {"data": params}},
        "metrics": {"metrics/eval.json": {"data": metrics}, "metrics/mix.json": {"data": mix}}}}]}


def table(law, noise: float, runs: int = 16, seed: int = 0, available=None) -> list:
    """`dvc exp show --json` rows: `runs` sampled mixtures at one seed, and uniform and a current
    mixture at three seeds, each value `law` plus noise of sd `noise`."""
    rng = np.random.default_rng(seed)
    exps = []
    for i, mixture in enumerate(sample_mixtures({"code": 0.5, "docs": 0.2, "prose": 0.3}, runs, seed, 2.0)):
        shares = np.array([mixture[n] for n in NAMES])
        exps.append(experiment(f"mixsearch-0-{i:02d}", mixture, law(shares) + rng.normal(0, noise, 3), available=available))
    for label, mixture in (("uniform", {n: 0.333 for n in NAMES}), ("current", {"code": 0.5, "docs": 0.2, "prose": 0.3})):
        shares = np.array([mixture[n] for n in NAMES]) / sum(mixture.values())
        for s in (1337, 1338, 1339):
            exps.append(experiment(f"mixsearch-0-{label}-s{s}", mixture, law(shares) + rng.normal(0, noise, 3), s, available=available))
    return [{"rev": "workspace", "data": {}}, {"rev": "f" * 40, "experiments": exps}]


def test_proxies_scale_steps_tokens_and_data_and_anchors_are_replicated():
    params = from_dict(Params, {"seed": 7, "sources": {n: {"format": "text", "path": n} for n in NAMES},
                                "tokenizer": {}, "split": {}, "pack": {}, "mix": {"weights": {"code": 2, "docs": 1, "prose": 1}, "train_tokens": 1_000_000},
                                "train": {"max_iters": 200, "warmup_iters": 20}}, "")
    overrides = proxy_overrides(params, 0.25, {"model.preset": "cpu-tiny"})
    assert overrides["mix.train_tokens"] == 250_000 and overrides["mix.data_fraction"] == 0.25
    assert overrides["train.max_iters"] == 50 and overrides["train.warmup_iters"] == 5 and overrides["model.preset"] == "cpu-tiny"
    current = params.mix.weights
    runs = plan_runs(current, sample_mixtures(current, 6, 0, 2.0), params.seed, 3, overrides, "mixsearch", 0)
    names = [name for name, _ in runs]
    assert names[:6] == [f"mixsearch-0-{i:02d}" for i in range(6)]
    assert names[6:] == [f"mixsearch-{a}-s{s}" for a in ("uniform", "current") for s in (7, 8, 9)], "the same anchors in every plan"
    assert all("seed" not in changes for _, changes in runs[:6]), "sampled mixtures share the params' seed"
    assert runs[6][1]["mix.weights.code"] == 0.333 and runs[9][1]["mix.weights.code"] == 0.5
    command = exp_command(*runs[0], present={"mix.train_tokens"}) + ["evaluate"]
    assert command[:6] == ["dvc", "exp", "run", "--queue", "-n", "mixsearch-0-00"] and command[-1] == "evaluate"
    assert "+mix.data_fraction=0.25" in command and "mix.train_tokens=250000" in command and "+model.preset='cpu-tiny'" in command
    two = sample_mixtures({"code": 0.7, "prose": 0.3}, 5, seed=0, concentration=2.0)
    assert [m["code"] for m in two] == [0.05, 0.275, 0.5, 0.725, 0.95], "two sources: a grid"
    shifted = [m["code"] for m in sample_mixtures({"code": 0.7, "prose": 0.3}, 5, seed=1, concentration=2.0)]
    assert all(0.05 <= c <= 0.95 for c in shifted) and not set(shifted) & {0.05, 0.275, 0.5, 0.725, 0.95}, "another plan: new points"
    with pytest.raises(PipelineError, match="at least two sources"):
        sample_mixtures({"code": 1.0}, 4, 0, 2.0)


def test_a_real_effect_is_recommended_with_an_interval_above_zero(tmp_path):
    result = search(table(bowl, noise=0.005), None, "mixsearch", max_epochs=100, out_dir=tmp_path)
    assert result["target"] == {"bpb_code": 1.0, "bpb_docs": 1.0, "bpb_prose": 1.0}, "default: every source's bpb, summed"
    assert result["runs"] == 22 and result["mixtures"] == 18 and result["seed_noise_df"] == 4
    assert result["decision"] == "fitted" and result["recommended"] == result["fitted"]["shares"]
    found = np.array([result["recommended"][n] for n in NAMES])
    assert np.abs(found - OPTIMUM).max() < 0.05, found
    gain = result["gain_over_uniform"]
    assert 0 < gain["low"] < gain["mean"] < gain["high"]
    true_gain = 6 * ((np.full(3, 1 / 3) - OPTIMUM) ** 2).sum()
    assert gain["low"] <= true_gain <= gain["high"]
    assert all(law["seed_sd"] == pytest.approx(0.005, rel=0.8) for law in result["laws"].values())
    report = (tmp_path / "mixsearch.md").read_text()
    assert report.count("| mixsearch-0-") == 18 and "Recommended: the fitted optimum" in report
    assert json.loads((tmp_path / "mixsearch.json").read_text())["recommended"] == result["recommended"]
    assert (tmp_path / "mixsearch_fit.png").stat().st_size > 0 and (tmp_path / "mixsearch_surface.png").stat().st_size > 0


def test_no_effect_gives_cannot_tell_not_a_confident_answer(tmp_path):
    """On a flat truth the fit's optimum is noise: its 95% interval (simultaneous over every
    candidate mixture) must include zero in all but about 1 of 40 such searches (measured: 1 of 40)."""
    confident = 0
    for seed in range(10):
        result = search(table(flat, noise=0.02, seed=seed), None, "mixsearch", max_epochs=100, out_dir=tmp_path)
        if result["decision"] == "fitted":
            confident += 1
            continue
        assert result["gain_over_uniform"]["low"] <= 0
        assert result["recommended"] == result["best_observed"]["shares"]
        assert result["verdict"].startswith("Cannot tell: the proxies cannot tell these mixtures apart")
    assert confident <= 1


def test_repetition_bound_keeps_small_sources_small(tmp_path):
    rows = table(bowl, noise=0.001, available={"docs": 50})  # docs has 50 tokens of a 1000-token budget
    result = search(rows, "bpb_docs", "mixsearch", max_epochs=2, out_dir=tmp_path)
    assert result["fitted"]["shares"]["docs"] <= 0.1 + 1e-3, "2 epochs of 50 tokens is 10% of the budget"


def test_runs_that_differ_beyond_mixture_and_seed_are_not_fitted_together(tmp_path):
    rows = table(bowl, noise=0.001)
    rows[1]["experiments"].append(experiment("mixsearch-0-odd", {"code": 0.4, "docs": 0.3, "prose": 0.3}, bowl(OPTIMUM),
                                             extra={"model": {"preset": "cpu-tiny"}}))
    with pytest.raises(PipelineError, match="mixsearch-0-odd: its params differ .* in 'model'"):
        search(rows, None, "mixsearch", 8, tmp_path)


def test_errors_are_one_line(tmp_path):
    rows = table(bowl, noise=0.001, runs=1)
    rows[1]["experiments"] = rows[1]["experiments"][:4]  # 2 mixtures
    with pytest.raises(PipelineError, match="fit: 2 mixtures for 3 sources; the simplest law needs 5; plan more runs"):
        search(rows, None, "mixsearch", 8, tmp_path)
    with pytest.raises(PipelineError, match="no finished experiments named 'other-\\*'"):
        search(rows, None, "other", 8, tmp_path)
    with pytest.raises(PipelineError, match="--target: weight of 'loss' is not a number"):
        parse_target("loss=heavy", NAMES)


def test_verify_queues_three_mixtures_at_full_size_and_names_the_winner(tmp_path):
    report = {"target": {f"bpb_{n}": 1.0 for n in NAMES}, "recommended": {"code": 0.5, "docs": 0.2, "prose": 0.3},
              "fitted": {"shares": {"code": 0.5, "docs": 0.2, "prose": 0.3}},
              "uniform": {"shares": {"code": 0.333, "docs": 0.333, "prose": 0.333}},
              "best_observed": {"shares": {"code": 0.45, "docs": 0.25, "prose": 0.3}}}
    assert list(verify_candidates(report)) == ["recommended", "uniform", "best-observed"]
    sets = {"train.max_iters": "100"}
    runs = verify_runs(report, 1337, 3, sets)
    names = [name for name, _ in runs]
    assert [n.rsplit("-", 1)[-1] for n in names[:3]] == ["s1337", "s1338", "s1339"] and names[0].startswith("verify-recommended-")
    assert len({n.rsplit("-", 1)[0] for n in names}) == 3, "one name per mixture, its shares' digest in it"
    assert not {n for n, _ in verify_runs(report, 1337, 3, {"train.max_iters": "200"})} & set(names), "other settings, other runs"
    assert runs[3][1] == {"mix.weights.code": 0.333, "mix.weights.docs": 0.333, "mix.weights.prose": 0.333,
                          "train.max_iters": 100, "seed": 1337}
    rng = np.random.default_rng(0)
    exps = []
    for label, shares in verify_candidates(report).items():
        for s in (1337, 1338, 1339):
            values = bowl(np.array([shares[n] for n in NAMES]) / sum(shares.values())) + rng.normal(0, 0.002, 3) + 0.01 * (s - 1337)
            exps.append(experiment(next(n for n in names if n.startswith(f"verify-{label}-") and n.endswith(f"-s{s}")), shares, values, s))
    stale = experiment("verify-recommended-000000-s1337", {"code": 0.9, "docs": 0.05, "prose": 0.05}, np.full(3, 9.0), 1337)
    exps.append(stale)  # an older fit's run under the same label: not this report's
    assert verify_report([{"rev": "workspace", "data": {}}, {"rev": "f" * 40, "experiments": exps[:4]}], report, sets, tmp_path) is None
    result = verify_report([{"rev": "workspace", "data": {}}, {"rev": "f" * 40, "experiments": exps}], report, sets, tmp_path)
    assert result["winner"] == "recommended"
    assert result["differences"]["uniform"]["mean"] > result["differences"]["uniform"]["half"] > 0, "paired by seed: sure"
    assert result["verdict"].startswith("recommended wins: better than uniform by")
    assert "| recommended | 0.500 | 0.200 | 0.300 | 3 |" in (tmp_path / "mixsearch_verify.md").read_text()


def test_a_run_repeated_at_the_same_mixture_and_seed_counts_once(tmp_path):
    """Re-planning re-queues identical runs (same params, same metrics): counting them as seeds
    would shrink the measured noise and make the intervals too sure."""
    rows = table(bowl, noise=0.005)
    once = search(rows, None, "mixsearch", 100, tmp_path)
    repeated = json.loads(json.dumps(rows))
    for exp in rows[1]["experiments"]:
        again = json.loads(json.dumps(exp))
        again["revs"][0]["name"] = "mixsearch-1-" + again["revs"][0]["name"].rsplit("-", 1)[-1]
        again["revs"][0]["rev"] = "e" + again["revs"][0]["rev"][1:]
        repeated[1]["experiments"].append(again)
    twice = search(repeated, None, "mixsearch", 100, tmp_path)
    assert (twice["mixtures"], twice["seed_noise_df"], twice["noise_df"]) == (once["mixtures"], once["seed_noise_df"], once["noise_df"])
    assert twice["gain_over_uniform"] == pytest.approx(once["gain_over_uniform"])
