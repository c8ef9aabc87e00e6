"""Read a source's documents in pieces that worker processes can take on their own.

`read_tasks(cfg, key)` runs in the main process and cuts a source into tasks of about TASK_BYTES:
groups of small files, byte ranges of large text or JSONL files cut at document boundaries,
groups of Parquet row groups, or batches of records streamed from a local Hugging Face dataset.
`task_documents(task)` reads one task anywhere (usually a worker) and returns its documents in
order. The main process therefore touches each file only to plan its cuts, never per document.

Documents are cut from the raw bytes and then decoded as UTF-8; undecodable bytes become U+FFFD
and are counted (`ReadStats`). Blank documents are dropped.
- text, `document: file`: a file is one document; `paragraph`: documents are separated by blank
  lines (a line of nothing but spaces or tabs); `line`: one document per line (`\\n`, a trailing
  `\\r` dropped).
- jsonl: one JSON object per line, the document in `text_field`.
- parquet: the `text_field` column.
- hf: a local Hugging Face dataset folder (what `datasets.load_dataset` reads), streamed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline.config import SourceConfig
from pipeline.errors import ConfigError, PipelineError

TASK_BYTES = 1 << 20  # about this much text per task: small enough to keep every worker busy to the end
PARAGRAPH_BREAK = re.compile(rb"\n[ \t\r\f\v]*\n")
# a cut point inside a large paragraph-mode file: a blank line that follows a non-blank one. A
# regex scan of the whole file is guaranteed to split there too, so cutting there changes nothing.
SAFE_PARAGRAPH_CUT = re.compile(rb"[^ \t\r\f\v\n][ \t\r\f\v]*\n[ \t\r\f\v]*\n")
NEWLINE = re.compile(rb"\n")


@dataclass
class ReadStats:
    """What reading met: files read, U+FFFD inserted for undecodable bytes, documents holding any."""

    files: int = 0
    replaced_chars: int = 0
    docs_with_replacements: int = 0

    def add(self, other: "ReadStats") -> None:
        self.files += other.files
        self.replaced_chars += other.replaced_chars
        self.docs_with_replacements += other.docs_with_replacements


@dataclass(frozen=True)
class ReadTask:
    """One piece of a source: whole files, a byte range of one file, Parquet row groups, or texts."""

    format: str  # text | jsonl | parquet | texts
    files: tuple[str, ...] = ()
    start: int = 0  # text/jsonl: first byte of files[0]; parquet: first row group
    stop: int = -1  # text/jsonl: end byte of files[0]; parquet: end row group; -1: whole files
    document: str = "file"  # text: file | paragraph | line
    text_field: str = "text"  # jsonl / parquet
    texts: tuple[str, ...] = ()  # texts: the documents themselves


def source_files(cfg: SourceConfig, key: str) -> list[Path]:
    """The sorted files a file-based source reads (hidden files skipped)."""
    path = Path(cfg.path)
    if not path.exists():
        raise ConfigError(f"{key}.path: {path} not found")
    if path.is_file():
        if cfg.glob:
            raise ConfigError(f"{key}.glob applies to a folder, but {path} is a file")
        return [path]
    pattern = cfg.glob or "**/*"
    files = sorted(p for p in path.glob(pattern) if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ConfigError(f"{key}: no files match '{pattern}' in {path}")
    return files


def read_tasks(cfg: SourceConfig, key: str, task_bytes: int | None = None) -> Iterator[ReadTask]:
    """The source cut into tasks of about `task_bytes` (default TASK_BYTES), in reading order."""
    task_bytes = task_bytes or TASK_BYTES
    if cfg.format == "hf":
        yield from _hf_tasks(cfg, key, task_bytes)
    elif cfg.format == "parquet":
        yield from _parquet_tasks(source_files(cfg, key), cfg.text_field, task_bytes)
    else:
        yield from _file_tasks(source_files(cfg, key), cfg, task_bytes)


def iter_documents(cfg: SourceConfig, key: str, stats: ReadStats | None = None) -> Iterator[str]:
    """Every document of the source, in order, in this process (for small jobs and tests)."""
    for task in read_tasks(cfg, key):
        docs, task_stats = task_documents(task)
        if stats is not None:
            stats.add(task_stats)
        yield from docs


def task_documents(task: ReadTask) -> tuple[list[str], ReadStats]:
    """The non-blank documents of one task, in order, and what decoding them met."""
    stats = ReadStats()
    if task.format == "texts":
        docs = list(task.texts)
    elif task.format == "parquet":
        docs = _parquet_documents(task)
        stats.files = int(task.start == 0)
    else:
        docs = []
        for path in task.files:
            data = _read_range(path, task.start, task.stop)
            stats.files += int(task.start == 0)
            if task.format == "jsonl":
                docs += _jsonl_documents(data, path, task.start, task.text_field, stats)
            else:
                docs += [_decode(raw, stats) for raw in _cut_text(data, task.document)]
    return [d for d in docs if d and not d.isspace()], stats


# ---- planning (main process) ------------------------------------------------------------------


def _file_tasks(files: list[Path], cfg: SourceConfig, task_bytes: int) -> Iterator[ReadTask]:
    """Small files grouped into one task; a large file cut at document boundaries (never for `file`)."""
    options = {"format": cfg.format, "document": cfg.document, "text_field": cfg.text_field}
    group: list[str] = []
    size = 0
    for path in files:
        length = path.stat().st_size
        if length > task_bytes and (cfg.format == "jsonl" or cfg.document != "file"):
            if group:
                yield ReadTask(files=tuple(group), **options)
                group, size = [], 0
            boundary = SAFE_PARAGRAPH_CUT if cfg.format == "text" and cfg.document == "paragraph" else NEWLINE
            cuts = _cut_points(path, length, task_bytes, boundary)
            for start, stop in zip(cuts, cuts[1:]):
                yield ReadTask(files=(str(path),), start=start, stop=stop, **options)
            continue
        group.append(str(path))
        size += length
        if size >= task_bytes:
            yield ReadTask(files=tuple(group), **options)
            group, size = [], 0
    if group:
        yield ReadTask(files=tuple(group), **options)


def _cut_points(path: Path, length: int, task_bytes: int, boundary: re.Pattern) -> list[int]:
    """Byte offsets [0, ..., length] about `task_bytes` apart, each just after a `boundary` match.

    Any match is a valid cut (see SAFE_PARAGRAPH_CUT), so the file is searched in bounded windows.
    """
    cuts = [0]
    with open(path, "rb") as handle:
        at = task_bytes
        while at < length:
            handle.seek(at)
            window_start, tail, cut = at, b"", length
            while chunk := handle.read(1 << 16):
                window = tail + chunk
                match = boundary.search(window)
                if match:
                    cut = window_start + match.end()
                    break
                tail = window[-1024:]
                window_start += len(window) - len(tail)
            if cut >= length:
                break
            cuts.append(cut)
            at = cut + task_bytes
    cuts.append(length)
    return cuts


def _parquet_tasks(files: list[Path], field: str, task_bytes: int) -> Iterator[ReadTask]:
    import pyarrow.parquet as pq

    for path in files:
        try:
            meta = pq.ParquetFile(path)
        except Exception as exc:
            raise PipelineError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
        names = meta.schema_arrow.names
        if field not in names:
            raise PipelineError(f"{path}: no text column '{field}' (columns: {', '.join(names)})")
        start, size = 0, 0
        for group in range(meta.num_row_groups):
            size += meta.metadata.row_group(group).total_byte_size
            if size >= task_bytes or group == meta.num_row_groups - 1:
                yield ReadTask(format="parquet", files=(str(path),), start=start, stop=group + 1, text_field=field)
                start, size = group + 1, 0


def _hf_tasks(cfg: SourceConfig, key: str, task_bytes: int) -> Iterator[ReadTask]:
    """Batches of records streamed from a local Hugging Face dataset folder."""
    import datasets

    if not Path(cfg.path).exists():
        raise ConfigError(
            f"{key}.path: {cfg.path} is not a local folder; put hub datasets under `snapshots` (pinned revision)"
        )
    try:
        dataset = datasets.load_dataset(cfg.path, name=cfg.subset, split=cfg.hf_split, streaming=True)
    except Exception as exc:
        raise PipelineError(f"{key}: cannot load Hugging Face dataset '{cfg.path}': {str(exc).splitlines()[0]}") from None
    batch: list[str] = []
    size = 0
    for record in dataset:
        if cfg.text_field not in record:
            raise PipelineError(f"{key}.text_field: dataset '{cfg.path}' has no field '{cfg.text_field}'")
        text = record[cfg.text_field]
        if text is not None:
            batch.append(text)
            size += len(text)
        if size >= task_bytes:
            yield ReadTask(format="texts", texts=tuple(batch))
            batch, size = [], 0
    if batch:
        yield ReadTask(format="texts", texts=tuple(batch))


# ---- reading (any process) --------------------------------------------------------------------


def _read_range(path: str, start: int, stop: int) -> bytes:
    with open(path, "rb") as handle:
        if stop < 0:
            return handle.read()
        handle.seek(start)
        return handle.read(stop - start)


def _cut_text(data: bytes, document: str) -> list[bytes]:
    if document == "file":
        return [data]
    if document == "paragraph":
        return PARAGRAPH_BREAK.split(data)
    return [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")]


def _decode(data: bytes, stats: ReadStats) -> str:
    text = data.decode("utf-8", errors="replace")
    if "\ufffd" in text:
        replaced = text.count("\ufffd") - data.decode("utf-8", errors="ignore").count("\ufffd")
        if replaced:
            stats.replaced_chars += replaced
            stats.docs_with_replacements += 1
    return text


def _jsonl_documents(data: bytes, path: str, start: int, field: str, stats: ReadStats) -> list[str]:
    docs = []
    for number, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        try:
            record = json.loads(_decode(line, stats))
        except json.JSONDecodeError as exc:
            raise PipelineError(f"{path}:{_line_number(path, start, number)}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or field not in record:
            raise PipelineError(f"{path}:{_line_number(path, start, number)}: no text field '{field}'")
        text = record[field]
        if not isinstance(text, str):
            raise PipelineError(f"{path}:{_line_number(path, start, number)}: field '{field}' is not a string")
        docs.append(text)
    return docs


def _line_number(path: str, start: int, index: int) -> int:
    """1-based line number of line `index` of a range starting at byte `start` (error messages only)."""
    before = 0
    with open(path, "rb") as handle:
        while start > 0:
            chunk = handle.read(min(start, 1 << 20))
            before += chunk.count(b"\n")
            start -= len(chunk)
    return before + index + 1


def _parquet_documents(task: ReadTask) -> list[str]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(task.files[0]).read_row_groups(list(range(task.start, task.stop)), columns=[task.text_field])
    return [text for text in table.column(0).to_pylist() if text is not None]
