from __future__ import annotations

import types

from model.tracking import Tracker


def test_wandb_run_is_named_after_the_dvc_experiment_and_grouped_by_data(monkeypatch, tmp_path):
    """Tracker.start passes the DVC experiment name, data-version group, mixture tags and config to W&B."""
    import wandb

    seen = {}

    def fake_init(**kwargs):
        seen.update(kwargs)
        return types.SimpleNamespace(id="run123", log=lambda *a, **k: None, finish=lambda *a, **k: None)

    monkeypatch.setattr(wandb, "init", fake_init)
    monkeypatch.setenv("DVC_EXP_NAME", "heavy-prose")
    tracker = Tracker(tmp_path / "metrics", wandb_mode="offline", wandb_dir=tmp_path / "wandb",
                      config={"mix": {"weights": {"prose": 0.8}}, "data_manifests": {"train": "ab"}},
                      group="data-abcdef", tags=["prose=0.8"])
    tracker.start()
    assert seen["name"] == "heavy-prose" and seen["mode"] == "offline"
    assert seen["group"] == "data-abcdef" and seen["tags"] == ["prose=0.8"]
    assert seen["config"]["data_manifests"] == {"train": "ab"}
    assert tracker.run_id == "run123"

    monkeypatch.delenv("DVC_EXP_NAME")
    seen.clear()
    Tracker(None, wandb_mode="offline", wandb_dir=tmp_path / "wandb").start()
    assert seen["name"] is None, "W&B picks its own name outside an experiment"


def test_disabled_wandb_is_never_started(monkeypatch, tmp_path):
    import wandb

    monkeypatch.setattr(wandb, "init", lambda **kwargs: (_ for _ in ()).throw(AssertionError("started")))
    tracker = Tracker(tmp_path / "metrics", wandb_mode="disabled")
    tracker.start()
    tracker.log_train(1, 2.0, 1e-3, 100.0, None)
    assert tracker.train_rows == [[1, 2.0, 1e-3, 100.0, None]]
