"""An ordered, bounded process pool: what the stages that read whole sources share."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from typing import Callable, Iterable, Iterator

MAX_PENDING_PER_WORKER = 4  # tasks in flight per worker: enough to keep it busy, few enough to bound memory
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PARENT_POLL_SECONDS = 0.5  # how often a worker without PR_SET_PDEATHSIG looks for its parent


def ordered_parallel_map(fn: Callable, items: Iterable, workers: int, initializer=None, initargs=()) -> Iterator:
    """`map(fn, items)` over `workers` forked processes, in input order, with a bounded number of items
    in flight (items are pulled from `items` only as results are taken). One worker: in this process.
    The workers exit when this process dies, even by SIGKILL (see `_start_worker`)."""
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(fn, items)
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_start_worker, initargs=(os.getpid(), initializer, initargs)) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) >= workers * MAX_PENDING_PER_WORKER:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _start_worker(parent_pid: int, initializer, initargs) -> None:
    """A pool worker's initializer: make it die with its parent, then run the caller's initializer.

    A SIGKILLed parent cannot stop its pool, whose workers would go on with their tasks on their own.
    On Linux the kernel kills the worker when the parent dies (PR_SET_PDEATHSIG); elsewhere a daemon
    thread polls the parent pid (it runs only when the worker releases the GIL, so it is the fallback).
    The parent may have died before the signal was armed: then the worker's parent pid has changed.
    (Linux's "parent" is the forking thread: the caller's, or the pool's own, which lives as long as it.)"""
    if not _kill_with_parent():
        threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:
        os._exit(1)
    if initializer is not None:
        initializer(*initargs)


def _kill_with_parent() -> bool:
    """Ask Linux to SIGKILL this process when its parent dies; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc prctl to call
        return False


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)
