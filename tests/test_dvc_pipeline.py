"""`dvc repro` on a tiny params file in a temporary copy of the repo."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.blocks import load_blocks
from tests.conftest import REPO


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


TINY_PARAMS = {
    "seed": 7,
    "sources": {
        "notes": {"format": "text", "path": "corpus/notes", "document": "paragraph"},
        "records": {"format": "jsonl", "path": "corpus/records.jsonl"},
    },
    "tokenizer": {"name": "char"},
    "split": {"val_fraction": 0.2},
    "mix": {"train_tokens": 3000, "weights": {"notes": 0.5, "records": 0.5}},
    "pack": {"context_length": 32, "mode": "bestfit"},
}


def make_repo(path: Path, params: dict) -> Path:
    """Copy the project's files (as git sees them) into `path`, add a tiny corpus, commit."""
    listed = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], REPO).stdout.split()
    for name in listed:
        if (REPO / name).is_file() and not name.startswith(("metrics/", "reports/")) and name != "dvc.lock":
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, path / name)
    notes = path / "corpus" / "notes"
    notes.mkdir(parents=True)
    for i in range(12):
        (notes / f"n{i}.txt").write_text("\n\n".join(f"note {i}.{j}: the cat sat on mat {j}" for j in range(6)))
    records = [json.dumps({"text": f"record {i} says {'ab' * (i % 5 + 1)}"}) for i in range(80)]
    (path / "corpus" / "records.jsonl").write_text("\n".join(records) + "\n")
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], path)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], path)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny"], path)
    return path


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("repo"), TINY_PARAMS)
    run(["dvc", "repro", "pack"], repo)
    return repo


def test_repro_builds_packed_data(tiny_repo):
    blocks = load_blocks(tiny_repo / "data/packed/train")
    assert blocks.tokens.shape[1] == 33 and len(blocks) > 0
    assert blocks.manifest["tokenizer"] == "char"
    for name in ("notes", "records"):
        assert len(load_blocks(tiny_repo / f"data/packed/val/{name}")) > 0
    report = json.loads((tiny_repo / "metrics/mix.json").read_text())["sources"]
    assert abs(report["notes"]["achieved_share"] - 0.5) < 0.01
    assert "notes" in json.loads((tiny_repo / "metrics/pack.json").read_text())["train"]["tokens"]


def test_weight_change_reruns_mix_and_pack_only(tiny_repo):
    params = yaml.safe_load((tiny_repo / "params.yaml").read_text())
    params["mix"]["weights"]["notes"] = 0.8
    (tiny_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = ran(run(["dvc", "repro", "pack"], tiny_repo).stdout)
    assert {"mix", "pack"} <= stages
    assert not any(s.startswith(("tokenize", "split", "vocab")) for s in stages), stages
    report = json.loads((tiny_repo / "metrics/mix.json").read_text())["sources"]
    assert abs(report["notes"]["achieved_share"] - 0.8 / 1.3) < 0.01, "weights are relative"
    again = ran(run(["dvc", "repro", "pack"], tiny_repo).stdout)
    assert again <= {"sources"}, "nothing re-runs when nothing changed"


def test_editing_one_source_retokenizes_only_that_source(tiny_repo):
    records = tiny_repo / "corpus/records.jsonl"
    records.write_text(records.read_text() + json.dumps({"text": "record 99 says abab"}) + "\n")  # no new characters
    stages = ran(run(["dvc", "repro", "pack"], tiny_repo).stdout)
    assert "tokenize@records" in stages and "tokenize@notes" not in stages


def test_bad_params_fail_with_one_line_naming_the_key(tmp_path):
    params = json.loads(json.dumps(TINY_PARAMS))
    params["mix"]["weights"]["poetry"] = 1.0
    repo = make_repo(tmp_path, params)
    result = run(["dvc", "repro", "pack"], repo, check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors and "mix.weights.poetry" in errors[0]
    assert not (repo / "data/sources").exists()
