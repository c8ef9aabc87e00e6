from __future__ import annotations

import pytest

from pipeline.errors import PipelineError
from pipeline.replicate import exp_command, flatten, overrides, plan

WORKSPACE = {"seed": 1337, "mix": {"weights": {"code": 1.0, "prose": 1.0}}, "sample": {"prompts": ["def", "The"]}, "model": {"recipe": "modern"}}


def test_an_experiment_is_replicated_as_its_changes_to_the_workspace():
    target = {"seed": 1337, "mix": {"weights": {"code": 0.5, "prose": 1.0}}, "sample": {"prompts": ["x"]}, "model": {"recipe": "modern"}}
    assert flatten(target)["mix.weights.code"] == 0.5 and flatten(target)["sample.prompts"] == ["x"]
    assert overrides(WORKSPACE, target) == {"mix.weights.code": 0.5, "sample.prompts": ["x"]}
    assert overrides(WORKSPACE, WORKSPACE) == {}
    with pytest.raises(PipelineError, match="params.yaml has model.recipe, which the experiment lacks"):
        overrides(WORKSPACE, {"seed": 1, "mix": WORKSPACE["mix"], "sample": WORKSPACE["sample"]})


def test_seeds_follow_the_params_seed_and_existing_runs_are_not_queued_again():
    queued = plan(WORKSPACE, {"mix.weights.code": 0.5}, 3, existing={1337}, name="code-half")
    assert queued == [("code-half-s1338", {"mix.weights.code": 0.5, "seed": 1338}),
                      ("code-half-s1339", {"mix.weights.code": 0.5, "seed": 1339})]
    assert plan(WORKSPACE, {}, 2, existing={1337, 1338}, name="main") == []


def test_exp_command_writes_values_as_dvc_reads_them_back():
    """Hydra's override grammar (what `dvc exp run -S` parses): strings quoted, so commas and
    number-like text stay strings; a key params.yaml lacks is added with `+`."""
    command = exp_command("a-s2", {"mix.weights.code": 0.5, "sample.prompts": ["def", "it's, x"], "train.precision": "bf16",
                                     "train.init_from": None, "model.bias": False, "seed": 2})
    assert command[:6] == ["dvc", "exp", "run", "--queue", "-n", "a-s2"]
    assert command[6:] == ["-S", "mix.weights.code=0.5", "-S", "sample.prompts=['def','it\\'s, x']", "-S", "train.precision='bf16'",
                           "-S", "train.init_from=null", "-S", "model.bias=false", "-S", "seed=2"]
    with pytest.raises(PipelineError, match="sample.prompts: a value with a line break"):
        exp_command("a", {"sample.prompts": ["\n"]})
    assert exp_command("s", {"mix.data_fraction": 0.5, "seed": 3}, queue=False, present={"seed"}) == \
        ["dvc", "exp", "run", "-n", "s", "-S", "+mix.data_fraction=0.5", "-S", "seed=3"]
