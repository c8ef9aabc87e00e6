"""tinygpt small: the profile as one `dvc exp run`, checked like params.yaml before anything runs."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from pipeline.errors import PipelineError
from tests.helpers import REPO
from tinygpt.small import PROFILE, free_name, small_command


def test_the_profile_is_one_named_experiment_on_top_of_the_params():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    command = small_command(params, {"train.max_iters": 30, "mix.data_fraction": 0.5}, "small")
    assert command[:5] == ["dvc", "exp", "run", "-n", "small"] and "-S" in command
    sets = [command[i + 1] for i, word in enumerate(command) if word == "-S"]
    assert "train.max_iters=30" in sets and "train.max_iters=60" not in sets, "a change on top wins over the profile"
    assert "model.preset='cpu-small'" in sets and "pack.context_length=128" in sets
    assert len(sets) == len(PROFILE) + 1
    del params["mix"]["data_fraction"]
    assert "+mix.data_fraction=0.5" in small_command(params, {"mix.data_fraction": 0.5}, "small"), "a key params.yaml lacks is added"


def test_a_bad_change_is_one_line_before_dvc_runs(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    with pytest.raises(PipelineError, match="unknown key 'train.lr_max'"):
        small_command(params, {"train.lr_max": 1.0}, "small")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    done = subprocess.run(["tinygpt", "small", "-S", "train.max_iters=0"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr == "error: small profile: train.max_iters must be >= 1, got 0\n"
    dry = subprocess.run(["tinygpt", "small", "--dry-run"], cwd=tmp_path, capture_output=True, text=True)
    assert dry.returncode == 0 and dry.stdout.startswith("dvc exp run -n small -S ") and sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_a_second_run_gets_the_next_free_name():
    assert free_name("small", set()) == "small"
    assert free_name("small", {"small", "small-2", "other"}) == "small-3"
