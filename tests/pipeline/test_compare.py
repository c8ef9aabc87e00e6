from __future__ import annotations

import csv

import pytest

from pipeline.compare import compare, parse_runs
from pipeline.errors import PipelineError


def exp(rev: str, name: str | None, prose: float, code: float, losses: dict | None, tie: bool = True) -> dict:
    metrics = {}
    if losses is not None:
        metrics = {"metrics/eval.json": {"data": {"loss": losses["overall"], **{f"loss_{k}": v for k, v in losses.items() if k != "overall"}, "tokens": 10}}}
    params = {"params.yaml": {"data": {"mix": {"weights": {"prose": prose, "code": code}}, "model": {"tie_weights": tie}}}}
    return {"rev": rev, "name": name, "data": {"params": params, "metrics": metrics}}


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
    runs = compare(exp_show(), tmp_path, x_source="prose")
    assert len(runs) == 3
    table = (tmp_path / "compare.md").read_text().splitlines()
    assert table[0].startswith("| experiment | rev | tie_weights | share_code | share_prose |")
    assert len(table) == 2 + 3
    rows = list(csv.DictReader((tmp_path / "compare.csv").open()))
    heavy = next(r for r in rows if r["experiment"] == "heavy-prose")
    assert heavy["share_prose"] == "0.8" and heavy["val_loss_prose"] == "4.6" and heavy["tie_weights"] == "False"
    png = (tmp_path / "compare.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_compare_errors(tmp_path):
    with pytest.raises(PipelineError, match="no experiments"):
        compare([exp("workspace", None, 1, 1, None)], tmp_path)
    with pytest.raises(PipelineError, match="--x: no experiment trains on a source named 'poetry'"):
        compare(exp_show(), tmp_path, x_source="poetry")
