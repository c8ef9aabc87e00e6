"""The `snapshot@<name>` stage: data from outside the project, copied once into `data/raw/<name>/`.

A source is read from a path that DVC hashes, so that editing it re-runs exactly that source's
stages. Text that ships with Python (the default data) and Hugging Face hub datasets have no such
path, so a snapshot copies them into Parquet files (`part-NNNNN.parquet`, columns `id` and `text`,
one row per document), which a source then reads with `format: parquet`. DVC versions the copy like
any other output. A hub snapshot is pinned by its revision (a params change takes it again); an
embedded one is taken once per clone (`dvc repro -f snapshot@<name>` takes it again, e.g. after
changing Python).

- python-docs: `pydoc_data.topics`, Python's English documentation, one document per topic;
- python-stdlib: the standard library's `.py` files (tests and site-packages left out), one per file;
- package-docs: the READMEs of the installed Python packages (their metadata's long description),
  one per package: software documentation prose, what depends on the environment;
- hf: the hub dataset `path` at `revision`, streamed (nothing is cached twice), `max_docs` at most.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Iterator, Optional, Sequence

from pipeline.commands import stage_arguments
from pipeline.config import SnapshotConfig, entry, load_params
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_dir
from pipeline.paths import RAW_DIR

STDLIB_SKIP_DIRS = {"site-packages", "test", "tests", "idle_test"}
ROW_GROUP_DOCS = 1024  # rows per Parquet row group: the unit the tokenize workers read
PART_BYTES = 1 << 29  # start a new file after about this much text


def documents(cfg: SnapshotConfig, key: str) -> Iterator[tuple[str, str]]:
    """(id, text) of every document the snapshot holds, in a fixed order."""
    if cfg.format == "python-docs":
        import pydoc_data.topics

        for name in sorted(pydoc_data.topics.topics):
            yield name, pydoc_data.topics.topics[name]
    elif cfg.format == "python-stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        files = (p for p in root.rglob("*.py") if not STDLIB_SKIP_DIRS & set(p.relative_to(root).parts[:-1]))
        for path in sorted(files):
            yield path.relative_to(root).as_posix(), path.read_bytes().decode("utf-8", errors="replace")
    elif cfg.format == "package-docs":
        yield from _package_documents()
    else:
        yield from _hub_documents(cfg, key)


def _package_documents() -> Iterator[tuple[str, str]]:
    """The long descriptions (READMEs, in Markdown or reStructuredText) of the installed Python
    distributions, one per distribution, by name; those under 200 characters are left out."""
    from importlib.metadata import distributions

    texts = {}
    for dist in distributions():
        name, text = dist.metadata.get("Name"), dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if name and len(text.strip()) >= 200:
            texts.setdefault(name.lower(), text.strip())
    for name in sorted(texts):
        yield name, texts[name]


def _hub_documents(cfg: SnapshotConfig, key: str) -> Iterator[tuple[str, str]]:
    import datasets

    try:
        dataset = datasets.load_dataset(cfg.path, name=cfg.subset, split=cfg.hf_split, revision=cfg.revision, streaming=True)
        for row, record in enumerate(dataset):
            if cfg.max_docs is not None and row >= cfg.max_docs:
                return
            if cfg.text_field not in record:
                raise PipelineError(f"{key}.text_field: dataset '{cfg.path}' has no field '{cfg.text_field}'")
            if record[cfg.text_field] is not None:
                yield str(row), record[cfg.text_field]
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 - network, revision or dataset errors from the hub
        raise PipelineError(f"{key}: cannot stream '{cfg.path}' at {cfg.revision}: {str(exc).splitlines()[0][:200]}") from None


def write_snapshot(docs: Iterator[tuple[str, str]], out_dir: Path) -> dict:
    """Write the documents as Parquet parts into `out_dir` (replaced whole); return the counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    counts = {"docs": 0, "bytes": 0, "parts": 0}
    with atomic_dir(out_dir) as tmp:
        writer, part_bytes, rows = None, 0, []

        def flush() -> None:
            if rows:
                ids, texts = zip(*rows)
                writer.write_table(pa.table([pa.array(ids, pa.string()), pa.array(texts, pa.string())], schema=schema))
                rows.clear()

        for identifier, text in docs:
            if writer is None or part_bytes >= PART_BYTES:
                flush()
                if writer is not None:
                    writer.close()
                writer = pq.ParquetWriter(tmp / f"part-{counts['parts']:05d}.parquet", schema, compression="zstd")
                counts["parts"] += 1
                part_bytes = 0
            rows.append((identifier, text))
            size = len(text.encode("utf-8", "surrogatepass"))
            part_bytes += size
            counts["docs"] += 1
            counts["bytes"] += size
            if len(rows) >= ROW_GROUP_DOCS:
                flush()
        if writer is None:
            raise PipelineError(f"{out_dir.name}: the snapshot holds no documents")
        flush()
        writer.close()
    return counts


@cli
def main(argv: Optional[Sequence[str]] = None) -> None:
    args = stage_arguments(__doc__, "pipeline.snapshot", argv, entries="snapshots")
    params = load_params()
    name = entry(args.name, params.snapshots, "snapshots")
    counts = write_snapshot(documents(params.snapshots[name], f"snapshots.{name}"), RAW_DIR / name)
    print(f"snapshot {name}: {counts['docs']} documents, {counts['bytes'] / 1e6:.1f} MB in {counts['parts']} file(s)")


if __name__ == "__main__":
    main()
