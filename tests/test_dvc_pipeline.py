"""`dvc repro` of the data stages on tiny params in a temporary copy of the repo: what runs, and when."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.blocks import load_blocks
from tests.helpers import REPO


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
    "snapshots": {},
    "tokenizer": {"name": "char", "path": "models/README.md"},
    "split": {"val_fraction": 0.2},
    "mix": {"train_tokens": 3000, "weights": {"notes": 0.5, "records": 0.5}},
    "pack": {"context_length": 32, "mode": "bestfit"},
    "dedup": {"near": {"enabled": False}},  # the tiny notes differ in a word or two: near dedup would merge them
    # the paths dvc.yaml tracks must be written out (pipeline.config.TRACKED_PATHS)
    "train": {"init_from": "models/README.md"},
    "finetune": {"data": "data/instructions.jsonl", "init_from": "data/model", "vocab": "data/vocab"},
}
MORE_SOURCES = {  # every kind of source a user points at, each a DVC dependency
    "pages": {"format": "text", "path": "corpus/pages", "glob": "*.md"},
    "table": {"format": "hf", "path": "corpus/table"},
    "pydocs": {"format": "parquet", "path": "data/raw/pydocs"},
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
    pages = path / "corpus" / "pages"
    pages.mkdir()
    for i in range(10):
        (pages / f"p{i}.md").write_text(f"page {i}: a short page about mats and cats, number {i}")
    (pages / "skipped.txt").write_text("not a page")
    write_table(path)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], path)
    commit(path, "tiny")
    return path


def write_table(repo: Path, changed: dict[int, str] | None = None) -> None:
    """A local Hugging Face dataset folder (one Parquet file) of 40 rows, some of them changed."""
    rows = [f"row {i}: the cat ran" for i in range(40)]
    for i, text in (changed or {}).items():
        rows[i] = text
    folder = repo / "corpus" / "table" / "data"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": rows}), folder / "train-00000-of-00001.parquet")


def commit(path: Path, message: str) -> None:
    run(["git", "add", "-A"], path)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message], path)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    params = {**TINY_PARAMS, "sources": {**TINY_PARAMS["sources"], **MORE_SOURCES}, "snapshots": {"pydocs": {"format": "python-docs"}}}
    repo = make_repo(tmp_path_factory.mktemp("repo"), params)
    run(["dvc", "repro", "pack"], repo)
    return repo


def test_repro_builds_packed_data_and_status_is_clean(tiny_repo):
    blocks = load_blocks(tiny_repo / "data/packed/train")
    assert blocks.context_length == 32 and len(blocks) > 0
    assert blocks.manifest["tokenizer"] == "char"
    for name in ("notes", "records", "pages", "table", "pydocs"):
        assert len(load_blocks(tiny_repo / f"data/packed/val/{name}")) > 0
    report = json.loads((tiny_repo / "metrics/mix.json").read_text())["sources"]
    assert abs(report["notes"]["achieved_share"] - 0.5) < 0.01
    assert "notes" in json.loads((tiny_repo / "metrics/pack.json").read_text())["train"]["tokens"]
    assert json.loads((tiny_repo / "data/tokens/pages/manifest.json").read_text())["docs"] == 10, "the glob keeps *.md only"
    assert "up to date" in run(["dvc", "status", "pack"], tiny_repo).stdout
    assert ran(run(["dvc", "repro", "pack"], tiny_repo).stdout) == set(), "a no-op repro runs nothing"


def test_outputs_are_linked_into_the_cache_not_copied(tiny_repo):
    store = tiny_repo / "data/tokens/pydocs/tokens-00000.bin"
    assert store.stat().st_nlink == 2, "the workspace file and its cache entry share one inode"


def test_weight_change_reruns_mix_and_pack_only(tiny_repo):
    params = yaml.safe_load((tiny_repo / "params.yaml").read_text())
    params["mix"]["weights"]["notes"] = 0.8
    (tiny_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(run(["dvc", "repro", "pack"], tiny_repo).stdout) == {"mix", "pack"}
    report = json.loads((tiny_repo / "metrics/mix.json").read_text())["sources"]
    assert abs(report["notes"]["achieved_share"] - 0.8 / 1.3) < 0.01, "weights are relative"
    assert ran(run(["dvc", "repro", "pack"], tiny_repo).stdout) == set()


def test_dedup_change_reruns_dedup_and_what_follows_never_tokenize(tiny_repo):
    params = yaml.safe_load((tiny_repo / "params.yaml").read_text())
    params["dedup"] = {"near": {"enabled": True, "remove": False}}
    (tiny_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = ran(run(["dvc", "repro", "pack"], tiny_repo).stdout)
    assert "dedup" in stages and not any(s.startswith(("scan", "tokenize")) for s in stages), stages
    metrics = json.loads((tiny_repo / "metrics/dedup.json").read_text())
    assert metrics["sources"]["notes"]["near_removed_docs"] == 0 and metrics["settings"]["near"]["remove"] is False
    params["dedup"] = TINY_PARAMS["dedup"]
    (tiny_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "pack"], tiny_repo)
    assert "up to date" in run(["dvc", "status", "pack"], tiny_repo).stdout


def append_record(repo: Path) -> None:
    with open(repo / "corpus/records.jsonl", "a") as handle:
        handle.write(json.dumps({"text": "record 99 says abab"}) + "\n")


@pytest.mark.parametrize(
    "source, edit",
    [
        ("records", append_record),
        ("notes", lambda repo: (repo / "corpus/notes/n3.txt").write_text("note 3: the mat sat on the cat")),
        ("pages", lambda repo: (repo / "corpus/pages/p2.md").write_text("page 2: cats")),
        ("table", lambda repo: write_table(repo, {1: "row 1: the rat ran"})),
    ],
)
def test_editing_one_raw_file_reruns_exactly_its_source(tiny_repo, source, edit):
    edit(tiny_repo)  # no new characters: the char vocabulary stays the same
    stages = ran(run(["dvc", "repro", "pack"], tiny_repo).stdout)
    assert stages == {f"scan@{source}", f"tokenize@{source}", "dedup", f"split@{source}", "mix", "pack"}, stages
    assert "up to date" in run(["dvc", "status", "pack"], tiny_repo).stdout


def test_a_file_outside_the_glob_changes_nothing_but_is_hashed(tiny_repo):
    (tiny_repo / "corpus/pages/skipped.txt").write_text("still not a page")
    stages = ran(run(["dvc", "repro", "pack"], tiny_repo).stdout)
    assert stages <= {"scan@pages", "tokenize@pages"}, stages  # the folder is the dep; the store comes out equal


def test_editing_a_module_reruns_the_stages_that_import_it(tiny_repo):
    sources = tiny_repo / "pipeline/sources.py"
    sources.write_text(sources.read_text() + "\n# an edit\n")
    stages = ran(run(["dvc", "repro", "pack"], tiny_repo).stdout)
    names = ("notes", "records", "pages", "table", "pydocs")
    assert stages == {f"{stage}@{n}" for stage in ("scan", "tokenize") for n in names}, stages  # stores come out equal


@pytest.mark.parametrize("section, key, value", [("mix", "weights", {"poetry": 1.0}), ("train", "batch_size", 0), ("model", "preset", "gpt3"), ("dedup", "scope", "everything")])
def test_bad_params_fail_in_the_first_stage_naming_the_key(tmp_path, section, key, value):
    params = json.loads(json.dumps(TINY_PARAMS))
    params.setdefault(section, {})[key] = value
    repo = make_repo(tmp_path, params)
    result = run(["dvc", "repro", "pack"], repo, check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors and f"{section}.{key}" in errors[0], result.stderr
    assert not (repo / "data/tokens").exists() and not (repo / "data/scan").exists(), "nothing ran before the check"


def test_a_removed_sources_folders_are_removed_and_nothing_reruns(tmp_path):
    """Left in data/scan, data/tokens or data/split, a removed source's folder is hashed into the deps
    of vocab, dedup, mix and pack: a clone without it would re-run them."""
    params = json.loads(json.dumps(TINY_PARAMS))
    params["sources"]["old"] = {"format": "jsonl", "path": "corpus/old.jsonl"}
    params["mix"]["weights"]["old"] = 0.2
    repo = make_repo(tmp_path, params)
    lines = [json.dumps({"text": f"says ba record {i}"}) for i in range(20)]  # the characters of `records`: the vocabulary stays
    (repo / "corpus/old.jsonl").write_text("\n".join(lines) + "\n")
    run(["dvc", "repro", "pack"], repo)
    (repo / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS, sort_keys=False))
    output = run(["dvc", "repro", "pack"], repo).stdout
    assert ran(output) == {"vocab", "dedup", "mix", "pack"}, output
    assert "dedup: removed data/tokens/old (no source 'old' in params.yaml)" in output
    assert not [d for d in ("scan", "tokens", "split") if (repo / "data" / d / "old").exists()]
    assert "up to date" in run(["dvc", "status", "pack"], repo).stdout
    assert ran(run(["dvc", "repro", "pack"], repo).stdout) == set()
