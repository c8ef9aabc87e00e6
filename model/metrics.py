"""A training run's metrics: DVCLive for DVC, Weights & Biases beside it, and a separate timing file.

- DVCLive (`metrics/train/`): `metrics.json`, the summary `dvc exp show` and `dvc metrics show` read
  (updated at every log, so it shows a run in progress), and `plots/metrics/{train,val}/*.tsv`, the
  step curves of `dvc plots show` (train loss and learning rate; val loss overall and per source).
- W&B (`wandb.mode`: offline by default): the same curves, tokens/s and MFU, every param, the data
  manifests' hashes and the git commit in the run config.
- `metrics/train_timing.json`: what is measured rather than computed (tokens/s, MFU, seconds).

Everything DVC tracks except the timing file depends only on params, data and code, so two
identical CPU runs give identical DVC hashes. The history lives in memory and in every checkpoint
(`state()` / `restore()`): a resumed run rewrites the DVCLive files from it, so its curves continue
as if it had never stopped, and it reopens the same W&B run (the run id is kept under the W&B folder,
keyed by the checkpoint's fingerprint, not in the checkpoint).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path
from typing import Any, Optional

from pipeline.io import sha256_file, write_json
from pipeline.paths import MANIFEST_FILE, WANDB_DIR


def git_commit(cwd: str | Path = ".") -> Optional[str]:
    """`git rev-parse HEAD`, or None outside a repository or before the first commit."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def manifest_hashes(folders: dict[str, Path]) -> dict[str, str]:
    """sha256 of each folder's `manifest.json`, keyed like `folders`."""
    return {name: sha256_file(Path(folder) / MANIFEST_FILE) for name, folder in folders.items()}


def run_config(params: Any, data_hashes: dict[str, str]) -> dict:
    """Every param, the data manifest hashes and the git commit: the W&B run config."""
    config = dataclasses.asdict(params) if dataclasses.is_dataclass(params) else dict(params or {})
    config["data_manifests"] = dict(data_hashes)
    config["git_commit"] = git_commit()
    return config


def mixture_tags(weights: dict[str, float]) -> list[str]:
    """One W&B tag per mixture weight, e.g. `code=0.5`."""
    return [f"{name}={weight:g}"[:64] for name, weight in sorted(weights.items())]


class Tracker:
    """Keeps the train/val history; when active (rank 0), logs it to DVCLive, W&B and the timing file.

    `metrics_dir=None` keeps the history only (no files, no W&B).
    """

    def __init__(
        self,
        metrics_dir: str | Path | None,
        timing_file: str | Path | None = None,
        wandb_mode: str = "disabled",
        project: str = "tinygpt",
        wandb_dir: str | Path = WANDB_DIR,
        config: Optional[dict] = None,
        group: Optional[str] = None,
        tags: Optional[list[str]] = None,
    ):
        self.metrics_dir = Path(metrics_dir) if metrics_dir is not None else None
        self.timing_file = Path(timing_file) if timing_file is not None else None
        self.wandb_mode = wandb_mode if metrics_dir is not None else "disabled"
        self.project = project
        self.wandb_dir = Path(wandb_dir)
        self.config = config or {}
        self.group = group
        self.tags = tags or []
        self.active = metrics_dir is not None
        self.train_rows: list[list] = []  # [step, loss, lr]
        self.val_rows: list[list] = []  # [step, overall, {source: loss}]
        self._live = None
        self._run = None

    def restore(self, state: Optional[dict]) -> None:
        """Take back the history saved in a checkpoint."""
        if state:
            self.train_rows = [list(r) for r in state.get("train", [])]
            self.val_rows = [[r[0], r[1], dict(r[2])] for r in state.get("val", [])]

    def state(self) -> dict:
        """The history as plain types, for `torch.load(weights_only=True)`."""
        return {"train": self.train_rows, "val": self.val_rows}

    def start(self, run_key: str) -> None:
        """Open DVCLive (rewriting the history so far) and, when enabled, the W&B run of `run_key`."""
        if not self.active:
            return
        from dvclive import Live

        self._live = Live(dir=str(self.metrics_dir), resume=False, save_dvc_exp=False, dvcyaml=False)
        for step, loss, lr in self.train_rows:
            self._log_live(step, {"train/loss": loss, "train/lr": lr})
        for step, overall, per_source in self.val_rows:
            self._log_live(step, _val_values(overall, per_source))
        if self.wandb_mode != "disabled":
            self._start_wandb(run_key)

    def _start_wandb(self, run_key: str) -> None:
        import wandb

        id_file = self.wandb_dir / "runs" / f"{run_key[:16]}.id"
        run_id = id_file.read_text().strip() if id_file.is_file() and (self.train_rows or self.val_rows) else None
        self.wandb_dir.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=self.project, mode=self.wandb_mode, dir=str(self.wandb_dir), id=run_id,
            resume="allow" if run_id else None, name=os.environ.get("DVC_EXP_NAME") or None,
            group=self.group, tags=self.tags, config=self.config, settings=wandb.Settings(silent=True, console="off"),
        )
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(self._run.id)

    def log_train(self, step: int, loss: float, lr: float, tokens_per_s: float, mfu: Optional[float]) -> None:
        self.train_rows.append([step, loss, lr])
        self._log_live(step, {"train/loss": loss, "train/lr": lr})
        if self._run is not None:
            values = {"train/loss": loss, "train/lr": lr, "train/tokens_per_s": tokens_per_s}
            if mfu is not None:
                values["train/mfu"] = mfu
            self._run.log(values, step=step)

    def log_val(self, step: int, overall: float, per_source: dict[str, float]) -> None:
        self.val_rows.append([step, overall, dict(per_source)])
        self._log_live(step, _val_values(overall, per_source))
        if self._run is not None:
            self._run.log({"val/loss": overall, **{f"val/{name}/loss": v for name, v in per_source.items()}}, step=step)

    def _log_live(self, step: int, values: dict[str, float]) -> None:
        if self._live is None:
            return
        self._live.step = step
        for name, value in values.items():
            self._live.log_metric(name, value)
        self._live.make_summary()

    def finish(self, summary: dict, timing: dict) -> None:
        """Final values into the DVCLive summary, measured ones into the timing file; close W&B."""
        if self._live is not None:
            self._live.summary.update(summary)
            self._live.end()
            self._live = None
        if self.active and self.timing_file is not None:
            write_json(self.timing_file, timing)
        if self._run is not None:
            for key, value in {**summary, **timing}.items():
                self._run.summary[key] = value
            self._run.finish()
            self._run = None

    def abort(self) -> None:
        """Close an open W&B run as failed (the trainer stopped with an error)."""
        if self._run is not None:
            self._run.finish(exit_code=1)
            self._run = None


def _val_values(overall: float, per_source: dict[str, float]) -> dict[str, float]:
    return {"val/loss": overall, **{f"val/loss_{name}": loss for name, loss in per_source.items()}}
