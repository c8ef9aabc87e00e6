"""The training metrics: DVCLive files, their rewrite on resume, the timing file, W&B naming."""

from __future__ import annotations

import json
import types

from model.metrics import Tracker, mixture_tags


def fake_wandb(monkeypatch, seen: dict):
    import wandb

    def fake_init(**kwargs):
        seen.setdefault("inits", []).append(kwargs)
        return types.SimpleNamespace(id="run123", log=lambda *a, **k: None, finish=lambda *a, **k: None, summary={})

    monkeypatch.setattr(wandb, "init", fake_init)


def test_wandb_run_is_named_after_the_dvc_experiment_and_grouped_by_data(monkeypatch, tmp_path):
    """Tracker.start passes the DVC experiment name, data-version group, mixture tags and config to W&B."""
    seen: dict = {}
    fake_wandb(monkeypatch, seen)
    monkeypatch.setenv("DVC_EXP_NAME", "heavy-prose")
    tracker = Tracker(tmp_path / "metrics", wandb_mode="offline", wandb_dir=tmp_path / "wandb",
                      config={"mix": {"weights": {"prose": 0.8}}, "data_manifests": {"train": "ab"}},
                      group="data-abcdef", tags=["prose=0.8"])
    tracker.start("fingerprint-1")
    init = seen["inits"][-1]
    assert init["name"] == "heavy-prose" and init["mode"] == "offline" and init["id"] is None
    assert init["group"] == "data-abcdef" and init["tags"] == ["prose=0.8"]
    assert init["config"]["data_manifests"] == {"train": "ab"}

    resumed = Tracker(tmp_path / "metrics", wandb_mode="offline", wandb_dir=tmp_path / "wandb")
    resumed.restore({"train": [[10, 2.0, 1e-3]], "val": []})
    resumed.start("fingerprint-1")
    assert seen["inits"][-1]["id"] == "run123" and seen["inits"][-1]["resume"] == "allow", "a resumed run reopens its W&B run"
    assert mixture_tags({"prose": 0.5, "code": 1}) == ["code=1", "prose=0.5"]


def test_disabled_wandb_is_never_started(monkeypatch, tmp_path):
    import wandb

    monkeypatch.setattr(wandb, "init", lambda **kwargs: (_ for _ in ()).throw(AssertionError("started")))
    tracker = Tracker(tmp_path / "metrics", wandb_mode="disabled")
    tracker.start("x")
    tracker.log_train(1, 2.0, 1e-3, 100.0, None)
    assert tracker.train_rows == [[1, 2.0, 1e-3]], "measured values stay out of the history"


def curves(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*.tsv"))}


def test_dvclive_files_and_a_resume_that_continues_the_curves(tmp_path):
    whole = Tracker(tmp_path / "a", timing_file=tmp_path / "a-timing.json")
    whole.start("x")
    for step in (10, 20, 30, 40):
        whole.log_train(step, 5.0 - step / 10, 1e-3, 1000.0 + step, 0.1)
        if step % 20 == 0:
            whole.log_val(step, 4.0 - step / 10, {"code": 3.0, "prose": 5.0})
    whole.finish({"step": 40, "val_loss": 0.0}, {"tokens_per_s": 123.0})

    first = Tracker(tmp_path / "b", timing_file=tmp_path / "b-timing.json")
    first.start("x")
    for step in (10, 20):
        first.log_train(step, 5.0 - step / 10, 1e-3, 9.0, None)
    first.log_val(20, 4.0 - 2.0, {"code": 3.0, "prose": 5.0})
    saved = json.loads(json.dumps(first.state()))  # what a checkpoint keeps (plain types), then a kill

    again = Tracker(tmp_path / "b", timing_file=tmp_path / "b-timing.json")
    again.restore(saved)
    again.start("x")
    for step in (30, 40):
        again.log_train(step, 5.0 - step / 10, 1e-3, 7.0, None)
        if step % 20 == 0:
            again.log_val(step, 4.0 - step / 10, {"code": 3.0, "prose": 5.0})
    again.finish({"step": 40, "val_loss": 0.0}, {"tokens_per_s": 456.0})

    assert curves(tmp_path / "a") == curves(tmp_path / "b"), "the resumed run's curves equal the uninterrupted one's"
    assert set(curves(tmp_path / "a")) == {
        "plots/metrics/train/loss.tsv", "plots/metrics/train/lr.tsv",
        "plots/metrics/val/loss.tsv", "plots/metrics/val/loss_code.tsv", "plots/metrics/val/loss_prose.tsv",
    }
    assert (tmp_path / "a/metrics.json").read_text() == (tmp_path / "b/metrics.json").read_text()
    summary = json.loads((tmp_path / "a/metrics.json").read_text())
    assert summary["step"] == 40 and summary["train"]["loss"] == 1.0 and summary["val"]["loss_code"] == 3.0
    assert "tokens_per_s" not in json.dumps(summary) and "timestamp" not in curves(tmp_path / "a")["plots/metrics/train/loss.tsv"]
    assert json.loads((tmp_path / "b-timing.json").read_text()) == {"tokens_per_s": 456.0}
