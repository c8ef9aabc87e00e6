"""Reading sources: formats, document units, read tasks cut at safe boundaries, errors, snapshots."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import SnapshotConfig, SourceConfig
from pipeline.errors import ConfigError, PipelineError
from pipeline.snapshot import documents, write_snapshot
from pipeline.sources import ReadStats, iter_documents, read_tasks, task_documents


def docs(cfg: SourceConfig, stats: ReadStats | None = None) -> list[str]:
    return list(iter_documents(cfg, "sources.t", stats))


def docs_in_tasks(cfg: SourceConfig, task_bytes: int) -> list[str]:
    return [d for task in read_tasks(cfg, "sources.t", task_bytes) for d in task_documents(task)[0]]


def test_text_file_folder_glob_and_document_units(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n\nthree\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("four")
    (tmp_path / "sub" / "c.txt").write_text("five\r\nsix")
    assert docs(SourceConfig(format="text", path=str(tmp_path / "a.txt"))) == ["one\ntwo\n\nthree\n"]
    assert docs(SourceConfig(format="text", path=str(tmp_path), document="paragraph", glob="*.txt")) == ["one\ntwo", "three\n"]
    assert docs(SourceConfig(format="text", path=str(tmp_path / "a.txt"), document="line")) == ["one", "two", "three"]
    assert docs(SourceConfig(format="text", path=str(tmp_path / "sub/c.txt"), document="line")) == ["five", "six"]
    assert docs(SourceConfig(format="text", path=str(tmp_path), glob="**/*.txt")) == ["one\ntwo\n\nthree\n", "five\r\nsix"]
    assert docs(SourceConfig(format="text", path=str(tmp_path))) == ["one\ntwo\n\nthree\n", "four", "five\r\nsix"]


def messy_paragraphs(n: int, seed: int) -> str:
    """Paragraphs separated by runs of blank lines, some holding spaces and tabs, some unicode."""
    rng = np.random.default_rng(seed)
    words = ["alpha", "béta", "gamma", "  indented", "\tx = 1", "naïve", "end."]
    parts = []
    for i in range(n):
        lines = [" ".join(rng.choice(words, size=int(rng.integers(1, 8)))) for _ in range(int(rng.integers(1, 5)))]
        parts.append("\n".join(lines))
        parts.append(["\n\n", "\n\n\n", "\n  \n", "\n\t\n\n", "\n \n \n"][int(rng.integers(5))])
    return "".join(parts)


@pytest.mark.parametrize("document", ["paragraph", "line"])
def test_large_files_cut_into_tasks_give_the_same_documents(tmp_path, document):
    text = messy_paragraphs(3000, seed=3)
    (tmp_path / "big.txt").write_text(text)
    cfg = SourceConfig(format="text", path=str(tmp_path / "big.txt"), document=document)
    whole = docs_in_tasks(cfg, task_bytes=len(text.encode()) * 2)
    if document == "paragraph":
        expected = [p for p in re.split(r"\n[ \t\r\f\v]*\n", text) if p.strip()]
    else:
        expected = [line for line in text.split("\n") if line.strip()]
    assert whole == expected
    for task_bytes in (97, 1000, 4096):
        tasks = list(read_tasks(cfg, "sources.t", task_bytes))
        assert len(tasks) > 5 and all(t.stop > t.start for t in tasks)
        assert docs_in_tasks(cfg, task_bytes) == expected


def test_jsonl_cut_into_tasks_and_small_files_grouped(tmp_path):
    records = [{"text": f"record {i} " + "x" * (i % 50)} for i in range(500)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = SourceConfig(format="jsonl", path=str(tmp_path / "d.jsonl"))
    assert docs_in_tasks(cfg, 300) == [r["text"] for r in records]
    assert len(list(read_tasks(cfg, "sources.t", 300))) > 50
    for i in range(30):
        (tmp_path / "many").mkdir(exist_ok=True)
        (tmp_path / "many" / f"{i:02d}.txt").write_text(f"file {i}")
    many = SourceConfig(format="text", path=str(tmp_path / "many"))
    tasks = list(read_tasks(many, "sources.t", 40))
    assert 3 < len(tasks) < 30 and docs_in_tasks(many, 40) == [f"file {i}" for i in range(30)]


def test_undecodable_bytes_are_replaced_and_counted(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 ok \xff\xfe and a real \xef\xbf\xbd\n\nclean\n\nagain \xff")
    stats = ReadStats()
    found = docs(SourceConfig(format="text", path=str(tmp_path / "bad.txt"), document="paragraph"), stats)
    assert found[0].count("\ufffd") == 4 and found[1] == "clean"
    assert stats.replaced_chars == 4 and stats.docs_with_replacements == 2 and stats.files == 1


def test_jsonl_and_parquet(tmp_path):
    lines = [json.dumps({"body": t, "n": i}) for i, t in enumerate(["alpha", "beta"])]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n\n")
    assert docs(SourceConfig(format="jsonl", path=str(tmp_path / "d.jsonl"), text_field="body")) == ["alpha", "beta"]
    pq.write_table(pa.table({"text": ["gamma", None, "delta"] * 300}), tmp_path / "d.parquet", row_group_size=100)
    cfg = SourceConfig(format="parquet", path=str(tmp_path / "d.parquet"))
    assert docs(cfg) == ["gamma", "delta"] * 300
    assert len(list(read_tasks(cfg, "sources.t", 500))) > 1 and docs_in_tasks(cfg, 500) == ["gamma", "delta"] * 300


def test_bad_records_name_file_and_line(tmp_path):
    good = "".join(json.dumps({"text": f"ok {i}"}) + "\n" for i in range(200))
    (tmp_path / "d.jsonl").write_text(good + '{"txt": "no"}\n')
    with pytest.raises(PipelineError, match=r"d.jsonl:201: no text field 'text'"):
        docs_in_tasks(SourceConfig(format="jsonl", path=str(tmp_path / "d.jsonl")), 500)  # the line is in a later task
    (tmp_path / "e.jsonl").write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(PipelineError, match=r"e.jsonl:2: not valid JSON"):
        docs(SourceConfig(format="jsonl", path=str(tmp_path / "e.jsonl")))
    (tmp_path / "f.jsonl").write_text('{"text": 3}\n')
    with pytest.raises(PipelineError, match=r"f.jsonl:1: field 'text' is not a string"):
        docs(SourceConfig(format="jsonl", path=str(tmp_path / "f.jsonl")))
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "d.parquet")
    with pytest.raises(PipelineError, match="no text column 'text'"):
        docs(SourceConfig(format="parquet", path=str(tmp_path / "d.parquet")))


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"sources.t.path: .*nope not found"):
        docs(SourceConfig(format="text", path=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="no files match"):
        docs(SourceConfig(format="text", path=str(tmp_path), glob="*.txt"))


def test_huggingface_dataset_from_a_local_folder(tmp_path):
    """Real `datasets.load_dataset` code on a dataset folder the test builds (no hub access)."""
    folder = tmp_path / "my_dataset" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"content": ["first doc", "second doc", "third"]}), folder / "train-00000-of-00001.parquet")
    cfg = SourceConfig(format="hf", path=str(tmp_path / "my_dataset"), text_field="content")
    assert docs(cfg) == ["first doc", "second doc", "third"]
    with pytest.raises(PipelineError, match="sources.t.text_field"):
        docs(SourceConfig(format="hf", path=str(tmp_path / "my_dataset"), text_field="text"))
    with pytest.raises(ConfigError, match="put hub datasets under `snapshots`"):
        docs(SourceConfig(format="hf", path="someone/some-dataset"))


def test_embedded_snapshots_are_large_enough_and_offline(tmp_path):
    prose = list(documents(SnapshotConfig(format="python-docs"), "snapshots.p"))
    code = list(documents(SnapshotConfig(format="python-stdlib"), "snapshots.c"))
    assert len(prose) > 50 and sum(len(t) for _, t in prose) > 300_000
    assert len(code) > 500 and sum(len(t) for _, t in code) > 5_000_000
    assert any("def " in text for _, text in code[:50])
    counts = write_snapshot(iter(prose), tmp_path / "raw")
    assert counts["docs"] == len(prose) and counts["parts"] == 1
    assert docs(SourceConfig(format="parquet", path=str(tmp_path / "raw"))) == [t for _, t in prose if t.strip()]


def test_package_docs_are_the_installed_packages_readmes():
    packages = list(documents(SnapshotConfig(format="package-docs"), "snapshots.d"))
    names = [name for name, _ in packages]
    assert names == sorted(names) and len(names) == len(set(names)) and "numpy" in names
    assert all(len(text) >= 200 for _, text in packages)


def test_snapshot_needs_a_pinned_hub_revision():
    from pipeline.typed import from_dict

    with pytest.raises(ConfigError, match="pinned revision"):
        from_dict(SnapshotConfig, {"format": "hf", "path": "someone/some-dataset"}, "snapshots.web")
    with pytest.raises(ConfigError, match="for format 'hf' only"):
        from_dict(SnapshotConfig, {"format": "python-docs", "path": "x"}, "snapshots.p")
