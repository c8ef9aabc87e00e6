from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import SourceConfig
from pipeline.errors import ConfigError, PipelineError
from pipeline.sources import ReadStats, doc_id, fingerprint, iter_documents, write_fingerprints


def docs(cfg: SourceConfig, stats: ReadStats | None = None) -> list[str]:
    return list(iter_documents(cfg, "sources.t", stats))


def test_text_file_folder_glob_and_document_units(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n\nthree\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("four")
    (tmp_path / "sub" / "c.txt").write_text("five")
    assert docs(SourceConfig(format="text", path=str(tmp_path / "a.txt"))) == ["one\ntwo\n\nthree\n"]
    assert docs(SourceConfig(format="text", path=str(tmp_path), document="paragraph", glob="*.txt")) == ["one\ntwo", "three\n"]
    assert docs(SourceConfig(format="text", path=str(tmp_path / "a.txt"), document="line")) == ["one", "two", "", "three"]
    assert docs(SourceConfig(format="text", path=str(tmp_path), glob="**/*.txt")) == ["one\ntwo\n\nthree\n", "five"]
    assert docs(SourceConfig(format="text", path=str(tmp_path))) == ["one\ntwo\n\nthree\n", "four", "five"]


def test_undecodable_bytes_are_replaced_and_counted(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 ok \xff\xfe and a real \xef\xbf\xbd")
    stats = ReadStats()
    (text,) = docs(SourceConfig(format="text", path=str(tmp_path / "bad.txt")), stats)
    assert text.count("\ufffd") == 4
    assert stats.replaced_chars == 3 and stats.docs_with_replacements == 1


def test_jsonl_and_parquet(tmp_path):
    lines = [json.dumps({"body": t, "n": i}) for i, t in enumerate(["alpha", "beta"])]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n\n")
    assert docs(SourceConfig(format="jsonl", path=str(tmp_path / "d.jsonl"), text_field="body")) == ["alpha", "beta"]
    pq.write_table(pa.table({"text": ["gamma", None, "delta"]}), tmp_path / "d.parquet")
    assert docs(SourceConfig(format="parquet", path=str(tmp_path / "d.parquet"))) == ["gamma", "delta"]


def test_bad_records_name_file_and_line(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(PipelineError, match=r"d.jsonl:2: no text field 'text'"):
        docs(SourceConfig(format="jsonl", path=str(tmp_path / "d.jsonl")))
    (tmp_path / "e.jsonl").write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(PipelineError, match=r"e.jsonl:2: not valid JSON"):
        docs(SourceConfig(format="jsonl", path=str(tmp_path / "e.jsonl")))
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


def test_hub_dataset_requires_a_pinned_revision():
    with pytest.raises(ConfigError, match="sources.t.revision is required"):
        docs(SourceConfig(format="hf", path="someone/some-dataset"))
    assert fingerprint(SourceConfig(format="hf", path="someone/some-dataset", revision="abc123"), "sources.t") == {
        "settings": {"format": "hf", "path": "someone/some-dataset", "revision": "abc123", "document": "file", "text_field": "text", "hf_split": "train"}
    }


def test_builtin_sources_are_large_enough_and_offline():
    prose = docs(SourceConfig(format="python-docs"))
    code = docs(SourceConfig(format="python-stdlib"))
    assert len(prose) > 50 and sum(map(len, prose)) > 300_000
    assert len(code) > 500 and sum(map(len, code)) > 5_000_000
    assert any("def " in text for text in code[:50])


def test_fingerprint_follows_content(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    cfg = SourceConfig(format="text", path=str(tmp_path))
    before = fingerprint(cfg, "sources.t")
    assert fingerprint(cfg, "sources.t") == before
    (tmp_path / "a.txt").write_text("two")
    assert fingerprint(cfg, "sources.t") != before
    out = tmp_path.parent / f"{tmp_path.name}-out"
    write_fingerprints({"t": cfg}, out)
    first = (out / "t.json").read_bytes()
    write_fingerprints({"t": cfg}, out)
    assert (out / "t.json").read_bytes() == first
    assert list(json.loads(first)["files"]) == ["a.txt"], "file keys are relative to the source folder"


def test_doc_id_is_a_content_hash():
    assert doc_id("abc") == doc_id("abc") != doc_id("abd")
    assert len(doc_id("")) == 32
