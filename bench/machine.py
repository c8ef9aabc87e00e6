"""What else the machine is doing while a benchmark runs: load average and CPU-time counters."""

from __future__ import annotations

import os


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(open("/proc/loadavg").read().split()[:3])


def busy_seconds() -> float:
    """CPU seconds all processes on the machine have used (busy fields of /proc/stat's `cpu` line)."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU seconds this process has used."""
    t = os.times()
    return t.user + t.system
