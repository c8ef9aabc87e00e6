"""Resumable training checkpoints: `step-NNNNNNNN/` folders written atomically, found, loaded.

A checkpoint folder holds the model files (`model.safetensors`, `model_config.json`), the train
data's manifest and `train_state.pt`: plain tensors and types only (loaded with
`weights_only=True`): every optimizer's state (AdamW, and Muon when it runs), position in the data, RNG states of every rank, the metric
history and a fingerprint of everything that shapes the run. Only a checkpoint with the same
fingerprint is resumed, so one made with other params, data or code is never continued by mistake.
Nothing measured (timings, run ids) goes in, so identical runs write identical checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from model.folders import TRAIN_MANIFEST_FILE, write_ours
from pipeline.io import sha256_file, temp_prefix, write_json

STATE_FILE = "train_state.pt"
STATE_FORMAT = 3  # 3: optimizer state is {optimizer name: its state_dict}


def fingerprint(parts: dict, code_files: Iterable[str | Path], init_from: Optional[str] = None) -> str:
    """sha256 of `parts` (plain data), the contents of `code_files` and the files of `init_from`
    (names, sizes and modification times)."""
    code = {Path(f).name: sha256_file(f) for f in code_files}
    init = None
    if init_from and Path(init_from).is_dir():
        init = sorted((str(f.relative_to(init_from)), f.stat().st_size, f.stat().st_mtime_ns)
                      for f in Path(init_from).rglob("*") if f.is_file())
    blob = {**parts, "code": code, "init_from": init}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def latest_checkpoint(checkpoint_dir: Path) -> Optional[Path]:
    """The highest complete `step-N` folder, if any."""
    if not checkpoint_dir.is_dir():
        return None
    found = [p for p in checkpoint_dir.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[1]), default=None)


def load_checkpoint(checkpoint_dir: Path, print_fn: Callable = print, expected: Optional[str] = None) -> Optional[tuple[Path, dict]]:
    """The latest checkpoint and its train state, or None when absent or from other params/data/code."""
    path = latest_checkpoint(checkpoint_dir)
    if path is None:
        return None
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    if state.get("format") != STATE_FORMAT or (expected is not None and state.get("fingerprint") != expected):
        print_fn(f"train: ignoring {path} (made with other params, data or code); starting fresh")
        return None
    return path, state


def save_checkpoint(checkpoint_dir: Path, model, state: dict, manifest: dict) -> Path:
    """Write `step-N/` beside the old one via a temp folder + rename, then drop the older ones."""
    tmp = checkpoint_folder(checkpoint_dir, state["step"])
    try:
        write_ours(model, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return finish_checkpoint(checkpoint_dir, tmp, state, manifest)


def checkpoint_folder(checkpoint_dir: Path, step: int) -> Path:
    """A new temporary folder for step `step`'s checkpoint, inside `checkpoint_dir`."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=temp_prefix(checkpoint_dir / f"step-{step:08d}"), dir=checkpoint_dir))


def finish_checkpoint(checkpoint_dir: Path, tmp: Path, state: dict, manifest: dict) -> Path:
    """Add the train state and the data manifest to the weights in `tmp` and publish it as `step-N`."""
    try:
        torch.save(state, tmp / STATE_FILE)
        write_json(tmp / TRAIN_MANIFEST_FILE, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return publish_checkpoint(checkpoint_dir, tmp, checkpoint_dir / f"step-{state['step']:08d}")


def publish_checkpoint(checkpoint_dir: Path, tmp: Path, final: Path) -> Path:
    """Put the complete checkpoint folder `tmp` in place as `final` (synced to disk first), then drop
    every other entry of `checkpoint_dir`: older checkpoints and debris of killed runs."""
    try:
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync(f)
        if final.exists():
            os.replace(final, checkpoint_dir / f".trash-{final.name}-{os.getpid()}")
        os.replace(tmp, final)
        _fsync(checkpoint_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for other in list(checkpoint_dir.iterdir()):
        if other != final:
            trash = other if other.name.startswith(".trash-") else checkpoint_dir / f".trash-{other.name}-{os.getpid()}"
            if trash != other:
                os.replace(other, trash)
            shutil.rmtree(trash, ignore_errors=True) if trash.is_dir() else trash.unlink(missing_ok=True)
    return final


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
