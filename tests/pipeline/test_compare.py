from __future__ import annotations

import csv
import statistics

import pytest

from pipeline.compare import compare, difference, group_runs, parse_runs, verdict
from pipeline.errors import PipelineError
from pipeline.stats import t975


def exp(rev: str, name: str | None, prose: float, code: float, losses: dict | None, tie: bool = True, seed: int = 1,
        se: float | None = None) -> dict:
    metrics = {}
    if losses is not None:
        values = {"loss": losses["overall"], **{f"loss_{k}": v for k, v in losses.items() if k != "overall"}, "tokens": 10}
        values.update({f"bpb{'' if k == 'overall' else '_' + k}": v / 3 for k, v in losses.items()})
        if se is not None:
            values.update({f"se_{key}": se for key in list(values) if key.startswith(("loss", "bpb"))})
        metrics = {"metrics/eval.json": {"data": values}}
    params = {"params.yaml": {"data": {"seed": seed, "mix": {"weights": {"prose": prose, "code": code}}, "model": {"tie_weights": tie}}}}
    return {"rev": rev, "name": name, "data": {"params": params, "metrics": metrics}}


def replicated(code_losses: dict[str, list[float]], prose: float = 5.0) -> list:
    """A baseline and experiments, one run per seed (1337, 1338, ...), code loss as given per setting."""
    runs = []
    for setting, losses in code_losses.items():
        for i, loss in enumerate(losses):
            seed = 1337 + i
            name = setting if i == 0 else f"{setting}-s{seed}"
            weight = 0.5 if setting == "main" else 0.2
            runs.append(exp(f"{setting}{seed}".ljust(40, "0"), name, weight, 1 - weight,
                            {"overall": (loss + prose) / 2, "prose": prose + 0.001 * i, "code": loss}, seed=seed))
    main, experiments = runs[0], runs[1:]
    main["experiments"] = [{"name": r["name"], "revs": [r]} for r in experiments]
    return [main]


def exp_show() -> list:
    """The shape of `dvc exp show --json`: baselines, each with its experiments."""
    workspace = exp("workspace", None, 0.5, 0.5, {"overall": 4.0, "prose": 5.0, "code": 3.5})
    main = exp("a" * 40, "main", 0.5, 0.5, {"overall": 4.0, "prose": 5.0, "code": 3.5})
    main["experiments"] = [
        {"name": "light-prose", "revs": [exp("b" * 40, "light-prose", 0.2, 0.8, {"overall": 3.8, "prose": 5.4, "code": 3.3})]},
        {"name": "heavy-prose", "revs": [exp("c" * 40, "heavy-prose", 0.8, 0.2, {"overall": 4.3, "prose": 4.6, "code": 4.0}, tie=False)]},
        {"name": "failed", "revs": [exp("d" * 40, "failed", 0.3, 0.7, None)]},
    ]
    return [workspace, main]


def test_parse_runs_reads_shares_and_losses():
    runs = parse_runs(exp_show())
    assert [r.name for r in runs] == ["main", "light-prose", "heavy-prose"], "no workspace, no run without metrics"
    light = runs[1]
    assert light.shares == {"code": 0.8, "prose": pytest.approx(0.2)}
    assert light.losses == {"overall": 3.8, "prose": 5.4, "code": 3.3}
    assert len(parse_runs(exp_show(), include_workspace=True)) == 4


def test_compare_writes_table_csv_and_plot(tmp_path):
    settings = compare(exp_show(), tmp_path, x_source="prose")
    assert len(settings) == 3
    table = (tmp_path / "compare.md").read_text().splitlines()
    assert table[0].startswith("| experiment | seeds | rev | tie_weights | share_code | share_prose |")
    assert table[2].startswith("| main | 1 (± val set) |")  # one seed, no error known: the bare value
    assert len(table) == 2 + 3 + 5  # the table, then the differences against main
    rows = list(csv.DictReader((tmp_path / "compare.csv").open()))
    heavy = next(r for r in rows if r["experiment"] == "heavy-prose")
    assert heavy["share_prose"] == "0.8" and heavy["val_loss_prose"] == "4.6" and heavy["tie_weights"] == "False"
    assert heavy["seeds"] == "1" and heavy["val_loss_prose_se"] == ""
    png = (tmp_path / "compare.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_compare_errors(tmp_path):
    with pytest.raises(PipelineError, match="no experiments"):
        compare([exp("workspace", None, 1, 1, None)], tmp_path)
    with pytest.raises(PipelineError, match="--x: no experiment trains on a source named 'poetry'"):
        compare(exp_show(), tmp_path, x_source="poetry")


def test_replicates_are_grouped_with_mean_and_standard_error(tmp_path):
    rows = replicated({"main": [3.50, 3.52, 3.49], "code-heavy": [3.40, 3.43, 3.41]})
    settings = group_runs(parse_runs(rows))
    assert [g.name for g in settings] == ["main", "code-heavy"] and [len(g.runs) for g in settings] == [3, 3]
    e = settings[1].estimate("loss", "code")
    assert e.mean == pytest.approx(3.41333, abs=1e-5) and e.seeds == 3
    assert e.se == pytest.approx(statistics.stdev([3.40, 3.43, 3.41]) / 3**0.5)

    d = difference(settings[0], settings[1], "loss", "code")  # paired by seed
    diffs = [-0.10, -0.09, -0.08]
    assert d.mean == pytest.approx(-0.09) and d.how == "paired over 3 seeds"
    assert d.half == pytest.approx(t975(2) * statistics.stdev(diffs) / 3**0.5) and d.decided
    line = verdict(settings[0], settings[1], "loss")
    assert line.startswith("code-heavy against main: better on code by 0.090 ± 0.025 loss;")
    assert "within noise" in line and "prose" in line  # prose moved by 0.000 in both

    compare(rows, tmp_path)
    md = (tmp_path / "compare.md").read_text()
    assert "| code-heavy | 3 |" in md and "3.4133 ± 0.0088" in md
    assert "- code-heavy against main: better on code by" in md
    rows_csv = list(csv.DictReader((tmp_path / "compare.csv").open()))
    assert rows_csv[1]["val_loss_code"] == "3.4133" and rows_csv[1]["val_loss_code_se"] == "0.0088"
    assert (tmp_path / "compare.png").read_bytes().startswith(b"\x89PNG")


def test_a_difference_within_noise_is_called_so():
    settings = group_runs(parse_runs(replicated({"main": [3.50, 3.60, 3.40], "other": [3.49, 3.42, 3.58]})))
    d = difference(*settings, "loss", "code")
    assert not d.decided and abs(d.mean) < d.half
    assert "on code (" in verdict(*settings, "loss") and "better" not in verdict(*settings, "loss")


def test_unpaired_and_single_seed_differences_say_how_they_were_made():
    a = exp("a" * 40, "main", 0.5, 0.5, {"overall": 4.0, "prose": 5.0, "code": 3.0}, seed=1, se=0.01)
    a["experiments"] = [{"name": "b", "revs": [exp("b" * 40, "b", 0.2, 0.8, {"overall": 3.9, "prose": 5.0, "code": 2.9}, seed=1, se=0.01)]}]
    base, other = group_runs(parse_runs([a]))
    d = difference(base, other, "loss", "code")
    assert d.half is None and not d.decided and d.how.startswith("one seed each")
    line = verdict(base, other, "loss")
    assert "cannot tell on code (-0.100)" in line and "better" not in line
    assert base.estimate("bpb", "code").se == 0.01  # one seed: the evaluation's own error

    rows = replicated({"main": [3.50, 3.52, 3.49], "c": [3.40, 3.401]})
    for r in rows[0]["experiments"]:  # other seeds than main's: no pairs
        r["revs"][0]["data"]["params"]["params.yaml"]["data"]["seed"] += 100
    base, other = group_runs(parse_runs(rows))
    d = difference(base, other, "loss", "code")
    assert d.how == "unpaired (3 and 2 seeds)" and d.decided

    rows = replicated({"main": [3.50, 3.52, 3.49], "c": [3.40]})
    rows[0]["experiments"][-1]["revs"][0]["data"]["params"]["params.yaml"]["data"]["seed"] = 99
    base, other = group_runs(parse_runs(rows))
    d = difference(base, other, "loss", "code")  # 3 seeds against 1: their spread stands for the one run's
    assert d.how.startswith("3 seeds against one")
    assert d.half == pytest.approx(t975(2) * statistics.stdev([3.50, 3.52, 3.49]) * (1 / 3 + 1) ** 0.5)


def test_the_same_params_and_seed_twice_are_two_settings():
    """An experiment that changed only code has the baseline's params and seed: not a replicate."""
    main = exp("a" * 40, "main", 0.5, 0.5, {"overall": 4.0, "prose": 5.0, "code": 3.0})
    main["experiments"] = [{"name": "faster-kernel", "revs": [exp("b" * 40, "faster-kernel", 0.5, 0.5, {"overall": 3.9, "prose": 5.0, "code": 2.8})]},
                           {"name": "main", "revs": [exp("c" * 40, "main", 0.5, 0.5, {"overall": 3.9, "prose": 5.0, "code": 2.8})]}]
    settings = group_runs(parse_runs([main]))
    assert [g.name for g in settings] == ["main", "faster-kernel", "main@ccccccc"]
    assert all(len(g.runs) == 1 for g in settings)


def test_compare_baseline_must_name_a_setting(tmp_path):
    with pytest.raises(PipelineError, match="--baseline: no setting named 'nope'"):
        compare(exp_show(), tmp_path, baseline="nope")
    compare(exp_show(), tmp_path, baseline="light-prose")
    assert "Differences against light-prose" in (tmp_path / "compare.md").read_text()
