"""pipeline.io: atomic outputs, and the temporaries a killed process leaves behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.io import atomic_dir, atomic_file, remove_dropped_sources


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_atomic_dir_removes_its_targets_stale_temps_only(tmp_path, dead_pid):
    live = os.getpid()
    stale = [f".out.tmp-{dead_pid}-abc_123", f".out.old-{dead_pid}", ".out.tmp-k3j2h1g0"]  # the last: no pid (old style)
    kept = [f".out.tmp-{live}-def456", f".out.old-{live}", f".other.tmp-{dead_pid}-abc", f".out.x.tmp-{dead_pid}-abc", "keep.txt"]
    for name in stale + kept:
        (tmp_path / name).mkdir()
        (tmp_path / name / "part.bin").write_bytes(b"half written")
    with atomic_dir(tmp_path / "out") as tmp:
        assert tmp.name.startswith(f".out.tmp-{live}-"), "the temp folder names its process"
        (tmp / "done.txt").write_text("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "out"])
    assert (tmp_path / "out/done.txt").read_text() == "ok"


def test_atomic_file_removes_stale_temp_files(tmp_path, dead_pid):
    (tmp_path / f".a.json.tmp-{dead_pid}-xyz").write_text("{")
    (tmp_path / f".a.json.tmp-{os.getpid()}-xyz").write_text("{")
    with atomic_file(tmp_path / "a.json") as handle:
        handle.write("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".a.json.tmp-{os.getpid()}-xyz", "a.json"])


def test_only_the_folders_of_dropped_sources_are_removed(tmp_path, capsys):
    for name in ("kept", "dropped", ".dropped.tmp-1-abc"):
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("a file, not a source's folder")
    (tmp_path / "linked").symlink_to(tmp_path / "kept")
    remove_dropped_sources(tmp_path, {"kept": None}, "dedup")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dropped.tmp-1-abc", "kept", "linked", "notes.txt"]
    assert capsys.readouterr().out == f"dedup: removed {tmp_path / 'dropped'} (no source 'dropped' in params.yaml)\n"
