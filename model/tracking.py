"""Training metrics, twice: Weights & Biases (when enabled) and plain DVC metrics/plots files.

DVC files under `metrics/`:
- `train.json`             final values (a DVC metric, flat keys);
- `plots/train.tsv`        step, loss, lr, tokens_per_s, mfu (every `train.log_interval` steps);
- `plots/val_loss.tsv`     step, loss: token-weighted over all sources;
- `plots/val/<source>.tsv` step, loss: one file per source.

The history lives in memory and in every checkpoint (`state()` / `restore()`), so a resumed run
writes the whole curve, and it reopens the same W&B run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
from pathlib import Path
from typing import Any, Optional

from pipeline.io import atomic_file, sha256_file, write_json

TRAIN_COLUMNS = ("step", "loss", "lr", "tokens_per_s", "mfu")


def git_commit(cwd: str | Path = ".") -> Optional[str]:
    """`git rev-parse HEAD`, or None outside a repository or before the first commit."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def manifest_hashes(folders: dict[str, Path]) -> dict[str, str]:
    """sha256 of each folder's `manifest.json`, keyed like `folders`."""
    return {name: sha256_file(Path(folder) / "manifest.json") for name, folder in folders.items()}


def run_config(params: Any, data_hashes: dict[str, str]) -> dict:
    """Every param, the data manifest hashes and the git commit: the W&B run config."""
    config = dataclasses.asdict(params) if dataclasses.is_dataclass(params) else dict(params or {})
    config["data_manifests"] = dict(data_hashes)
    config["git_commit"] = git_commit()
    return config


def mixture_tags(weights: dict[str, float]) -> list[str]:
    """One W&B tag per mixture weight, e.g. `code=0.5`."""
    return [f"{name}={weight:g}"[:64] for name, weight in sorted(weights.items())]


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class Tracker:
    """Keeps the train/val history; when active (rank 0), also logs it to W&B and DVC files.

    `metrics_dir=None` keeps the history only (no files).
    """

    def __init__(
        self,
        metrics_dir: str | Path | None,
        wandb_mode: str = "disabled",
        project: str = "tinygpt",
        wandb_dir: str | Path = "data/wandb",
        config: Optional[dict] = None,
        group: Optional[str] = None,
        tags: Optional[list[str]] = None,
        active: bool = True,
    ):
        self.metrics_dir = Path(metrics_dir) if metrics_dir is not None else None
        self.wandb_mode = wandb_mode
        self.project = project
        self.wandb_dir = Path(wandb_dir)
        self.config = config or {}
        self.group = group
        self.tags = tags or []
        self.active = active
        self.run_id: Optional[str] = None
        self.train_rows: list[list] = []  # [step, loss, lr, tokens_per_s, mfu]
        self.val_rows: list[list] = []  # [step, overall, {source: loss}]
        self._run = None

    def restore(self, state: Optional[dict]) -> None:
        """Take back the history and W&B run id saved in a checkpoint."""
        if state:
            self.run_id = state.get("run_id") or None
            self.train_rows = [list(r) for r in state.get("train", [])]
            self.val_rows = [[r[0], r[1], dict(r[2])] for r in state.get("val", [])]

    def state(self) -> dict:
        """History and run id as plain types, for `torch.load(weights_only=True)`."""
        return {"run_id": self.run_id or "", "train": self.train_rows, "val": self.val_rows}

    def start(self) -> None:
        """Open (or reopen, after a resume) the W&B run."""
        if not self.active or self.wandb_mode == "disabled":
            return
        import wandb

        self.wandb_dir.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=self.project,
            mode=self.wandb_mode,
            dir=str(self.wandb_dir),
            id=self.run_id or None,
            resume="allow" if self.run_id else None,
            name=os.environ.get("DVC_EXP_NAME") or None,
            group=self.group,
            tags=self.tags,
            config=self.config,
            settings=wandb.Settings(silent=True, console="off"),
        )
        self.run_id = self._run.id

    def log_train(self, step: int, loss: float, lr: float, tokens_per_s: float, mfu: Optional[float]) -> None:
        self.train_rows.append([step, loss, lr, tokens_per_s, mfu])
        if self._run is not None:
            values = {"train/loss": loss, "train/lr": lr, "train/tokens_per_s": tokens_per_s}
            if mfu is not None:
                values["train/mfu"] = mfu
            self._run.log(values, step=step)

    def log_val(self, step: int, overall: float, per_source: dict[str, float]) -> None:
        self.val_rows.append([step, overall, dict(per_source)])
        if self._run is not None:
            values = {"val/loss": overall, **{f"val/{name}/loss": v for name, v in per_source.items()}}
            self._run.log(values, step=step)

    def write_files(self, summary: Optional[dict] = None) -> None:
        """(Re)write `metrics/plots/*` from the history, and `metrics/train.json` when a summary is given."""
        if not self.active or self.metrics_dir is None:
            return
        plots = self.metrics_dir / "plots"
        with atomic_file(plots / "train.tsv") as f:
            f.write("\t".join(TRAIN_COLUMNS) + "\n")
            for row in self.train_rows:
                f.write("\t".join(_fmt(v) for v in row) + "\n")
        with atomic_file(plots / "val_loss.tsv") as f:
            f.write("step\tloss\n")
            for step, overall, _ in self.val_rows:
                f.write(f"{step}\t{_fmt(overall)}\n")
        sources = sorted({name for _, _, per in self.val_rows for name in per})
        for stale in (plots / "val").glob("*.tsv"):
            if stale.stem not in sources:
                stale.unlink()
        for name in sources:
            with atomic_file(plots / "val" / f"{name}.tsv") as f:
                f.write("step\tloss\n")
                for step, _, per in self.val_rows:
                    if name in per:
                        f.write(f"{step}\t{_fmt(per[name])}\n")
        if summary is not None:
            write_json(self.metrics_dir / "train.json", summary)

    def abort(self) -> None:
        """Close an open W&B run as failed (the trainer stopped with an error)."""
        if self._run is not None:
            self._run.finish(exit_code=1)
            self._run = None

    def finish(self, summary: dict) -> None:
        """Write the DVC files and close the W&B run with `summary` as its summary."""
        if not self.active:
            return
        self.write_files(summary)
        if self._run is not None:
            for key, value in summary.items():
                self._run.summary[key] = value
            self._run.finish()
            self._run = None
