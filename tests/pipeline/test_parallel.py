"""pipeline.parallel: the pool's workers never outlive the process that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.helpers import REPO

SCRIPT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from pipeline.parallel import ordered_parallel_map

    def record_pid(folder):
        (Path(folder) / str(os.getpid())).touch()

    for _ in ordered_parallel_map(time.sleep, [60] * 4, 2, record_pid, (sys.argv[1],)):
        pass
""")


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting for its reaper counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_workers_exit_when_the_parent_is_killed(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO)
    try:
        assert wait_until(lambda: len(list(tmp_path.iterdir())) == 2, 10), "the workers ran the caller's initializer"
        workers = [int(p.name) for p in tmp_path.iterdir()]
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
    assert wait_until(lambda: not any(running(pid) for pid in workers), 3), "a worker outlived its parent"
