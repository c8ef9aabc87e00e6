"""Small file helpers shared by the stages: atomic outputs (and what killed ones leave), JSON, hashing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Collection, Iterator

from pipeline.errors import PipelineError


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path`, on error it is removed.

    A killed or failing stage therefore never leaves a half-written output folder in place, and the
    temp folder a killed one leaves beside it is removed by the next `atomic_dir` on the same `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes the folder private; give it the usual mode
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator:
    """Open a temporary file beside `path` for writing; rename it over `path` once closed cleanly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def temp_prefix(path: Path) -> str:
    """The name of this process's temporaries for `path`, before mkdtemp's random part: it holds our
    pid, so a later run can tell the leftovers of a killed process from those of a running one."""
    return f".{path.name}.tmp-{os.getpid()}-"


def remove_stale_temps(path: Path) -> None:
    """Remove `path`'s temporaries (`.<name>.tmp-<pid>-*`, `.<name>.old-<pid>`) whose process is gone.

    A SIGKILLed stage cannot clean up after itself; its next run on the same target does. Temps of
    live processes and of other targets stay; old-style temps without a pid are taken as stale."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:tmp-(?:(\d+)-)?\w+|old-(\d+))")
    for entry in os.scandir(path.parent):
        found = pattern.fullmatch(entry.name)
        if found is None or _alive(int(found[1] or found[2] or 0)):
            continue
        stale = Path(entry.path)
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() and not stale.is_symlink() else stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether process `pid` exists (0: no pid recorded, taken as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_dropped_sources(folder: Path, sources: Collection[str], stage: str) -> None:
    """Remove the subfolders of `folder` (one per source) whose source params.yaml no longer names.

    The first stage that depends on `folder` as a whole calls this: a removed source's folder would be
    hashed into its DVC deps (DVC hashes them again after the command), so that a clone without it
    re-runs, and it could be read. Files and hidden entries (temps of running stages) stay."""
    if not folder.is_dir():
        return
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.is_symlink() and not entry.name.startswith(".") and entry.name not in sources:
            shutil.rmtree(entry)
            print(f"{stage}: removed {entry} (no source '{entry.name}' in params.yaml)")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, data: object) -> None:
    """Write `data` as stable, indented JSON (sorted keys), atomically."""
    with atomic_file(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def read_json(path: str | Path) -> dict:
    """A JSON file's content; one line naming the file when it is not JSON (a truncated write, a hand edit)."""
    try:
        return json.loads(Path(path).read_text())
    except ValueError as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc})") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_dir(path: str | Path) -> str:
    """One hash for a folder: its files' relative paths and contents, in sorted order."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()
