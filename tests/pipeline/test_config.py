from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import pytest
import yaml

from pipeline.config import UNTRACKED_SECTIONS, Params, load_params
from pipeline.errors import ConfigError
from tests.helpers import REPO


def write(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def default_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_default_params_load():
    params = load_params(REPO / "params.yaml")
    assert set(params.sources) == set(params.mix.weights)
    assert params.tokenizer.name == "bpe" and params.model.preset == "cpu-base"
    assert params.pack.mode in ("concat", "pad", "bestfit")


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda p: p.update(sead=1), "sead"),
        (lambda p: p["mix"].update(weigths={}), "mix.weigths"),
        (lambda p: p["sources"]["prose"].update(txt_field="x"), "sources.prose.txt_field"),
        (lambda p: p["split"].update(val_fraction=1.0), "split.val_fraction"),
        (lambda p: p["split"].update(val_fraction=-0.1), "split.val_fraction"),
        (lambda p: p["pack"].update(context_length=1), "pack.context_length"),
        (lambda p: p["pack"].update(mode="zip"), "pack.mode"),
        (lambda p: p["mix"]["weights"].update(prose=-1), "mix.weights.prose"),
        (lambda p: p["mix"].update(weights={"prose": 0, "code": 0}), "mix.weights"),
        (lambda p: p["mix"]["weights"].update(poetry=1), "mix.weights.poetry"),
        (lambda p: p["mix"].update(train_tokens="many"), "mix.train_tokens"),
        (lambda p: p["tokenizer"].update(name="bpe9000"), "tokenizer.name"),
        (lambda p: p["sources"].update(notes={"format": "text"}), "sources.notes.path"),
        (lambda p: p["sources"].update(notes={"format": "csv", "path": "x"}), "sources.notes.format"),
        (lambda p: p["sources"].update(notes={"format": "python-docs", "path": "x"}), "sources.notes.format"),
        (lambda p: p["snapshots"].update(web={"format": "hf", "path": "someone/data"}), "snapshots.web"),
        (lambda p: p["snapshots"].update(web={"format": "hf", "path": "a/b", "revision": "c", "max_docs": 0}), "snapshots.web.max_docs"),
        (lambda p: p["snapshots"].update({"bad name": {"format": "python-docs"}}), "snapshots.bad name"),
        (lambda p: p.pop("pack"), "pack"),
    ],
)
def test_bad_params_name_the_key(tmp_path, edit, key):
    params = default_params()
    edit(params)
    with pytest.raises(ConfigError) as error:
        load_params(write(tmp_path, params))
    message = str(error.value)
    assert key in message and "\n" not in message


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("mix: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_params(tmp_path / "bad.yaml")


def config_keys(cls, prefix: str = "") -> set[str]:
    """Dotted keys of every section and field of the config classes (dict entries as `<name>`)."""
    keys = set()
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        keys.add(key)
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys |= config_keys(hint, key + ".")
        elif typing.get_origin(hint) is dict:
            keys.add(f"{key}.<name>")
            value = typing.get_args(hint)[1]
            if dataclasses.is_dataclass(value):
                keys |= config_keys(value, f"{key}.<name>.")
    return keys


def dvc_params() -> set[str]:
    """Every params key named by a stage of dvc.yaml (foreach keys written as `<name>`)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    named = set()
    for stage in stages.values():
        body = stage.get("do", stage)
        for entry in body.get("params", []):
            for key in entry if isinstance(entry, dict) else [entry]:
                named.add(key.replace("${key}", "<name>"))
    return named


def test_dvc_yaml_params_match_config_classes():
    known = config_keys(Params)
    named = dvc_params()
    assert named, "dvc.yaml names no params"
    assert named <= known, f"dvc.yaml names params the config lacks: {sorted(named - known)}"
    covered = {key.split(".")[0] for key in named}
    sections = {f.name for f in dataclasses.fields(Params)} - set(UNTRACKED_SECTIONS)
    assert sections <= covered, f"config sections no stage declares: {sorted(sections - covered)}"
    assert not covered & set(UNTRACKED_SECTIONS), "where tasks run changes no output: not a DVC param"


def test_params_yaml_keys_are_config_keys():
    def leaves(data, prefix=""):
        for key, value in data.items():
            dotted = f"{prefix}{key}"
            yield dotted
            if isinstance(value, dict):
                yield from leaves(value, dotted + ".")

    known = config_keys(Params)
    raw = default_params()
    names = (
        {f"sources.{n}": "sources.<name>" for n in raw["sources"]}
        | {f"snapshots.{n}": "snapshots.<name>" for n in raw["snapshots"]}
        | {f"mix.weights.{n}": "mix.weights.<name>" for n in raw["mix"]["weights"]}
    )
    for key in leaves(raw):
        generic = key
        for concrete, pattern in names.items():
            if key == concrete or key.startswith(concrete + "."):
                generic = pattern + key[len(concrete):]
        assert generic in known, f"params.yaml key {key} is not in the config classes"


def bad_value(rules: dict):
    """A value that breaks the first of a field's limits."""
    if "at_least" in rules:
        return rules["at_least"] - 1 if isinstance(rules["at_least"], int) else rules["at_least"] - 0.5
    if "above" in rules:
        return rules["above"]
    if "below" in rules:
        return rules["below"]
    if "at_most" in rules:
        return rules["at_most"] + 1
    return "gpu0"  # a pattern: no device spec matches it


def constrained_fields() -> list[tuple[str, str, object]]:
    """(section, field, bad value) for every field that declares a limit, in every section and in the
    sections nested inside them (`dedup.near`, `finetune.lora`)."""
    out = []

    def walk(cls, path: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            inner = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
            target = inner[0] if len(inner) == 1 and typing.get_origin(hints[f.name]) in (typing.Union, types.UnionType) else hints[f.name]
            if dataclasses.is_dataclass(target):
                walk(target, f"{path}.{f.name}")
            elif f.metadata:
                out.append((path, f.name, bad_value(f.metadata)))

    for section in dataclasses.fields(Params):
        cls = typing.get_type_hints(Params)[section.name]
        if dataclasses.is_dataclass(cls):
            walk(cls, section.name)
    return out


@pytest.mark.parametrize("section, name, value", constrained_fields())
def test_every_limited_field_rejects_a_bad_value_at_load(tmp_path, section, name, value):
    params = node = default_params()
    for part in section.split("."):
        if not isinstance(node.get(part), dict):
            node[part] = {}  # an absent or null (optional) section
        node = node[part]
    node[name] = value
    with pytest.raises(ConfigError) as error:
        load_params(write(tmp_path, params))
    assert f"{section}.{name}" in str(error.value) and "\n" not in str(error.value)


def test_the_limits_cover_the_model_side():
    covered = {(s, n) for s, n, _ in constrained_fields()}
    for key in [("train", "batch_size"), ("train", "lr"), ("train", "device"), ("evaluate", "batch_size"),
                ("sample", "top_p"), ("sample", "temperature"), ("finetune", "epochs"), ("model", "dropout")]:
        assert key in covered, key


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda p: p["model"].update(preset="gpt3"), "model.preset"),
        (lambda p: p["model"].update(preset=None, n_layer=2), "model.n_head"),
        (lambda p: p["model"].update(n_head=5), "model.n_embd"),
        (lambda p: p["train"].update(lr=1e-4, min_lr=1e-3), "train.min_lr"),
        (lambda p: p["finetune"].update(lr=1e-4, min_lr=1e-3), "finetune.min_lr"),
        (lambda p: p["sample"].update(prompts=[]), "sample.prompts"),
        (lambda p: p["train"].update(device="tpu"), "train.device"),
        (lambda p: p["wandb"].update(mode="loud"), "wandb.mode"),
        (lambda p: p["model"].update(recipe="future"), "model.recipe"),
        (lambda p: p["model"].update(mlp="swish"), "model.mlp"),
        (lambda p: p["model"].update(arch="llama", preset="llama-cpu", qk_norm=True), "model.qk_norm"),
        (lambda p: p["model"].update(arch="llama", preset="llama-cpu", positions="rope"), "model.positions"),
        (lambda p: p["train"].update(optimizer="sgd"), "train.optimizer"),
        (lambda p: p["train"].update(precision="fp8"), "train.precision"),
        (lambda p: p["train"].update(device="cpu", doc_mask_kernel="flex"), "train.doc_mask_kernel"),
    ],
)
def test_model_side_params_fail_at_load(tmp_path, edit, key):
    params = default_params()
    edit(params)
    with pytest.raises(ConfigError) as error:
        load_params(write(tmp_path, params))
    assert key in str(error.value) and "\n" not in str(error.value)


def test_a_recipe_names_the_layer_switches_and_each_switch_overrides_it():
    from model.config import RECIPES, ModelConfig

    assert ModelConfig().layers() == RECIPES["classic"]
    assert ModelConfig(recipe="modern").layers() == RECIPES["modern"]
    assert ModelConfig(recipe="modern", mlp="relu2").layers() == {**RECIPES["modern"], "mlp": "relu2"}
    assert ModelConfig(arch="llama", preset="llama-cpu").layers() == {}
    from model.gpt import GPT2_LAYERS

    assert RECIPES["classic"] == GPT2_LAYERS, "classic is GPT-2's own layers, the model's defaults"


def test_the_default_params_switch_to_the_llama_layout_with_two_keys(tmp_path):
    """The default run's recipe names GPT-2-layout switches; it does not stop an arch change."""
    params = default_params()
    assert params["model"]["recipe"] == "modern" and params["train"]["optimizer"] == "muon"
    params["model"].update(arch="llama", preset="llama-cpu")
    loaded = load_params(write(tmp_path, params))
    assert loaded.model.arch == "llama" and loaded.model.layers() == {}


def test_the_paths_dvc_tracks_must_be_written_out(tmp_path):
    """dvc.yaml interpolates `${train.init_from}` and the like, which DVC finds only in params.yaml
    itself: a missing one is one line naming it and what to write."""
    from pipeline.config import TRACKED_PATHS

    for key in TRACKED_PATHS:
        params = default_params()
        section, name = key.split(".")
        del params[section][name]
        with pytest.raises(ConfigError, match=rf"missing key '{key}' \(dvc.yaml tracks the path it names; write it out, e.g. {key}: "):
            load_params(write(tmp_path, params))
