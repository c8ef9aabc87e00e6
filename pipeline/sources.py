"""Read a source's documents, streaming, and fingerprint its content.

The `sources` stage writes one fingerprint file per source (`data/sources/<name>.json`): the
content hashes of the files it reads, or the pinned identity of a Hugging Face dataset. It runs
on every `dvc repro` (it is cheap) and rewrites the same bytes while the inputs are unchanged, so
DVC re-runs `tokenize@<name>` exactly when that source's content or params changed.

Undecodable bytes are replaced by U+FFFD and counted (the tokenize manifest reports them).
"""

from __future__ import annotations

import hashlib
import json
import re
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from pipeline.config import SourceConfig, load_params
from pipeline.errors import ConfigError, PipelineError, cli
from pipeline.io import atomic_dir, sha256_file, write_json

SOURCES_DIR = Path("data/sources")
STDLIB_SKIP_DIRS = {"site-packages", "test", "tests", "idle_test"}
PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")


@dataclass
class ReadStats:
    """What reading a source ran into."""

    files: int = 0
    replaced_chars: int = 0  # U+FFFD inserted for undecodable bytes
    docs_with_replacements: int = 0


def source_files(cfg: SourceConfig, key: str) -> tuple[Path, list[Path]]:
    """The root folder and the sorted files a file-based source reads."""
    if cfg.format == "python-stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        files = [
            p for p in root.rglob("*.py") if not STDLIB_SKIP_DIRS & set(p.relative_to(root).parts[:-1])
        ]
        return root, sorted(files)
    if cfg.format == "python-docs":
        import pydoc_data.topics

        path = Path(pydoc_data.topics.__file__)
        return path.parent, [path]
    path = Path(cfg.path)
    if not path.exists():
        raise ConfigError(f"{key}.path: {path} not found")
    if path.is_file():
        if cfg.glob:
            raise ConfigError(f"{key}.glob applies to a folder, but {path} is a file")
        return path.parent, [path]
    pattern = cfg.glob or "**/*"
    files = sorted(p for p in path.glob(pattern) if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ConfigError(f"{key}: no files match '{pattern}' in {path}")
    return path, files


def fingerprint(cfg: SourceConfig, key: str) -> dict:
    """A deterministic description of everything the source's documents depend on."""
    settings = {k: v for k, v in asdict(cfg).items() if v is not None}
    if cfg.format == "hf" and not Path(cfg.path).exists():
        if not cfg.revision:
            raise ConfigError(f"{key}.revision is required for Hugging Face hub datasets (pin a commit or tag)")
        return {"settings": settings}
    root, files = source_files(cfg, key)
    return {"settings": settings, "files": {p.relative_to(root).as_posix(): sha256_file(p) for p in files}}


def iter_documents(cfg: SourceConfig, key: str, stats: ReadStats | None = None) -> Iterator[str]:
    """Yield the source's documents as text, in a fixed order, without loading it whole."""
    stats = stats if stats is not None else ReadStats()
    if cfg.format == "python-docs":
        import pydoc_data.topics

        stats.files = 1
        for name in sorted(pydoc_data.topics.topics):
            yield pydoc_data.topics.topics[name]
        return
    if cfg.format == "hf":
        yield from _hf_documents(cfg, key)
        return
    _, files = source_files(cfg, key)
    for path in files:
        stats.files += 1
        if cfg.format == "jsonl":
            yield from _jsonl_documents(path, cfg.text_field, stats)
        elif cfg.format == "parquet":
            yield from _parquet_documents(path, cfg.text_field)
        else:
            text = _decode(path.read_bytes(), stats)
            if cfg.document == "file":
                yield text
            elif cfg.document == "paragraph":
                yield from PARAGRAPH_BREAK.split(text)
            else:
                yield from text.splitlines()


def _decode(data: bytes, stats: ReadStats) -> str:
    text = data.decode("utf-8", errors="replace")
    if "\ufffd" in text:
        replaced = text.count("\ufffd") - data.decode("utf-8", errors="ignore").count("\ufffd")
        if replaced:
            stats.replaced_chars += replaced
            stats.docs_with_replacements += 1
    return text


def _jsonl_documents(path: Path, field: str, stats: ReadStats) -> Iterator[str]:
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(_decode(line, stats))
            except json.JSONDecodeError as exc:
                raise PipelineError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or field not in record:
                raise PipelineError(f"{path}:{number}: no text field '{field}'")
            if not isinstance(record[field], str):
                raise PipelineError(f"{path}:{number}: field '{field}' is not a string")
            yield record[field]


def _parquet_documents(path: Path, field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:
        raise PipelineError(f"{path}: not a readable Parquet file ({exc})") from None
    if field not in parquet.schema_arrow.names:
        raise PipelineError(f"{path}: no text column '{field}' (columns: {', '.join(parquet.schema_arrow.names)})")
    for batch in parquet.iter_batches(columns=[field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield text


def _hf_documents(cfg: SourceConfig, key: str) -> Iterator[str]:
    """Stream a Hugging Face dataset (hub name at a pinned revision, or a local dataset folder)."""
    import datasets

    local = Path(cfg.path).exists()
    if not local and not cfg.revision:
        raise ConfigError(f"{key}.revision is required for Hugging Face hub datasets (pin a commit or tag)")
    try:
        dataset = datasets.load_dataset(
            cfg.path, name=cfg.subset, split=cfg.hf_split, revision=cfg.revision, streaming=True
        )
    except Exception as exc:
        raise PipelineError(f"{key}: cannot load Hugging Face dataset '{cfg.path}': {str(exc).splitlines()[0]}") from None
    for record in dataset:
        if cfg.text_field not in record:
            raise PipelineError(f"{key}.text_field: dataset '{cfg.path}' has no field '{cfg.text_field}'")
        if record[cfg.text_field] is not None:
            yield record[cfg.text_field]


def doc_id(text: str) -> str:
    """Content hash of a document: identical texts get identical ids (and the same split)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def write_fingerprints(sources: dict[str, SourceConfig], out_dir: Path) -> None:
    """Write `<name>.json` for every source into `out_dir`, replacing it whole."""
    prints = {name: fingerprint(cfg, f"sources.{name}") for name, cfg in sources.items()}
    with atomic_dir(out_dir) as tmp:
        for name, data in prints.items():
            write_json(tmp / f"{name}.json", data)


@cli
def main() -> None:
    write_fingerprints(load_params().sources, SOURCES_DIR)


if __name__ == "__main__":
    main()
