"""pipeline.parallel: the pool's workers never outlive the process that started them, a lost worker
fails the stage instead of hanging it, and Ray gives the same bytes as the pool."""

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


def die_on_three(x: int) -> int:
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer would
    return x


def test_a_worker_that_dies_fails_the_map_in_one_line():
    import pytest

    from pipeline.errors import PipelineError
    from pipeline.parallel import ordered_parallel_map

    with pytest.raises(PipelineError, match=r"^a worker process died"):
        list(ordered_parallel_map(die_on_three, range(10), 2))


def test_closing_the_map_early_stops_its_workers():
    from pipeline.parallel import ordered_parallel_map

    started = time.monotonic()
    results = ordered_parallel_map(time.sleep, [0, 60, 60, 60], 2)
    assert next(results) is None
    results.close()
    assert time.monotonic() - started < 10, "close waited for the tasks in flight"


# ---- on Ray ----------------------------------------------------------------------------------------


def test_the_stages_write_the_same_bytes_on_a_ray_cluster(tmp_path):
    """tokenize and dedup run as DVC runs them (`python -m`, relative paths, the project as working
    directory) with `executor.kind: ray` against a cluster started by `ray start`, as a user would:
    the same stores and dedup indices, byte for byte, as with the process pool."""
    import yaml

    from tests.test_dvc_pipeline import TINY_PARAMS, make_repo, run

    near = {"enabled": True, "ngram": 2, "num_perm": 16, "bands": 8, "rows": 2}
    repo = make_repo(tmp_path / "p", {**TINY_PARAMS, "dedup": {"near": near}})
    run(["dvc", "repro", "dedup"], repo)  # the process pool
    outputs = sorted(p for folder in ("data/tokens", "data/dedup") for p in (repo / folder).rglob("*") if p.is_file())
    pool = {p: p.read_bytes() for p in outputs}
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["executor"] = {"kind": "ray", "workers": 2, "address": "auto"}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    run(["ray", "start", "--head", "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"], tmp_path)
    try:
        for stage in (["pipeline.tokenize", "notes"], ["pipeline.tokenize", "records"], ["pipeline.dedup"]):
            done = subprocess.run([sys.executable, "-m", *stage], cwd=repo, env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-3000:]
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True)
    assert pool and all(p.read_bytes() == data for p, data in pool.items())
    assert sorted(p for folder in ("data/tokens", "data/dedup") for p in (repo / folder).rglob("*") if p.is_file()) == outputs


def test_ray_missing_is_one_line(monkeypatch):
    import pytest

    from pipeline.errors import PipelineError
    from pipeline.parallel import Workers, ordered_parallel_map

    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(PipelineError, match=r'^executor.kind: ray needs the ray package \(pip install -e "\.\[ray\]"\)$'):
        list(ordered_parallel_map(abs, [-1, 2], Workers(2, "local")))
