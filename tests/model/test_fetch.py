"""model.fetch: a hub model at a pinned commit, safetensors and configs only (the hub is faked)."""

from __future__ import annotations

import fnmatch
import os
import socket
import subprocess
import sys
import time

import pytest

from model.fetch import fetch
from pipeline.errors import PipelineError
from tests.helpers import REPO

SHA = "a" * 40
HUB = {"config.json": b"{}", "tokenizer.json": b"{}", "model.safetensors": b"weights", "pytorch_model.bin": b"pickle",
       "consolidated.safetensors": b"a second copy", "README.md": b"card"}


@pytest.fixture(autouse=True)
def reachable_hub(monkeypatch):
    """The faked hub is always there: no request leaves the machine."""
    monkeypatch.setattr("model.fetch.check_hub_reachable", lambda repo_id: None)


@pytest.fixture
def fake_hub(monkeypatch):
    """snapshot_download that serves HUB's files matching allow_patterns, recording its calls."""
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, revision, allow_patterns, local_dir, cache_dir):
        calls.append((repo_id, revision))
        for name, data in HUB.items():
            if any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (local_dir / name).write_bytes(data)
        (local_dir / ".cache").mkdir()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_fetches_safetensors_and_configs_at_the_commit(tmp_path, fake_hub):
    out = fetch("org/tiny", SHA, tmp_path / "models/tiny")
    assert fake_hub == [("org/tiny", SHA)]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"], "no pickles, no card"


def test_a_moving_revision_is_refused(tmp_path, fake_hub):
    with pytest.raises(PipelineError, match="--revision: 'main' is not a 40-character commit sha"):
        fetch("org/tiny", "main", tmp_path / "m")
    assert fake_hub == [] and not (tmp_path / "m").exists()


def test_a_model_without_safetensors_leaves_nothing(tmp_path, fake_hub, monkeypatch):
    monkeypatch.delitem(HUB, "model.safetensors")
    with pytest.raises(PipelineError, match="no config.json and safetensors weights"):
        fetch("org/old", SHA, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_hub_errors_are_one_line_and_leave_nothing(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise ConnectionError("no route to the hub\nlong traceback text")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(PipelineError, match=r"org/tiny@a{40}: download failed \(ConnectionError: no route to the hub\)$"):
        fetch("org/tiny", SHA, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_an_unreachable_hub_fails_fast_in_one_line(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "model.fetch", "org/tiny", "--revision", SHA, "--out", str(tmp_path / "m")],
                            cwd=REPO, env={**os.environ, "HF_ENDPOINT": endpoint}, capture_output=True, text=True)
    assert time.monotonic() - started < 15, "no retries (huggingface_hub alone retries for 24 s and more)"
    assert result.returncode == 1 and result.stderr.startswith(f"error: org/tiny: the hub at {endpoint} could not be reached")
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "m").exists()
