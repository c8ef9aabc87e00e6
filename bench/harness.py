"""What the data benchmarks share: a throwaway copy of the project, DVC runs timed per stage, and
the peak anonymous memory (RssAnon: heap, not memory-mapped files) of every process they start."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def make_repo(dest: Path, params: dict) -> Path:
    """Copy the project's files (as git sees them, no data) into `dest`, write `params`, commit."""
    if dest.exists():
        shutil.rmtree(dest)
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        if (ROOT / name).is_file() and not name.startswith(("metrics/", "reports/", "data/")) and name != "dvc.lock":
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


def rss_anon_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


@dataclass
class Run:
    """One command: wall seconds, seconds per DVC stage, peak RssAnon (MB) per stage command."""

    wall: float
    stages: dict[str, float] = field(default_factory=dict)
    peak_mb: dict[str, float] = field(default_factory=dict)  # "python -m pipeline.pack" -> MB (main process)
    worker_peak_mb: dict[str, float] = field(default_factory=dict)  # largest child of that process
    output: str = ""


def timed(cmd: list[str], cwd: Path, sample_s: float = 0.05, env: dict | None = None) -> Run:
    """Run `cmd`, timing each `Running stage` section of DVC's output and sampling memory."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    peaks: dict[int, tuple[str, int, int]] = {}  # pid -> (cmdline, parent pid, peak kB)
    done = threading.Event()

    def sample() -> None:
        import psutil

        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                family = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            for p in family:
                kb = rss_anon_kb(p.pid)
                line, parent, peak = peaks.get(p.pid) or (cmdline(p.pid), _ppid(p), 0)
                peaks[p.pid] = (line, parent, max(peak, kb))
            time.sleep(sample_s)

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    sampler.start()
    stages, current, since, lines = {}, None, start, []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Running stage '"):
            now = time.perf_counter()
            if current:
                stages[current] = now - since
            current, since = line.split("'")[1], now
    proc.wait()
    end = time.perf_counter()
    done.set()
    sampler.join()
    if current:
        stages[current] = end - since
    output = "".join(lines)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{output[-3000:]}")
    run = Run(wall=end - start, stages=stages, output=output)
    for pid, (line, parent, kb) in peaks.items():
        if " -m pipeline." in line and peaks.get(parent, ("",))[0].find(" -m pipeline.") < 0:
            key = line[line.index("-m ") + 3 :]
            run.peak_mb[key] = max(run.peak_mb.get(key, 0), kb / 1024)
            children = [c_kb for c_pid, (_, c_parent, c_kb) in peaks.items() if c_parent == pid]
            if children:
                run.worker_peak_mb[key] = max(run.worker_peak_mb.get(key, 0), max(children) / 1024)
    return run


def _ppid(p) -> int:
    try:
        return p.ppid()
    except Exception:  # noqa: BLE001 - the process may be gone
        return 0


def disk_kb(*paths: Path) -> int:
    """Disk used by `paths` together, each hard-linked file counted once (`du -s --total`)."""
    out = subprocess.run(["du", "-sk", "--total", *map(str, paths)], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])
