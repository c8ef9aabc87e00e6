"""An ordered, bounded map over worker processes: what the stages that read whole sources share.

The workers are a process pool on this machine (`executor.kind: local`, the default) or the actors
of a Ray cluster (`executor.kind: ray`: datatrove, NeMo Curator and DCLM scale out on Ray too).
Either way the results come back in input order, so a stage writes the same bytes whatever runs
it and however many workers there are; and a bounded number of tasks is in flight, so memory does
not grow with the corpus. Ray is an optional extra (`pip install -e ".[ray]"`); its workers must
import this project and read the sources at the same paths (storage every node sees).
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

from pipeline.config import ExecutorConfig
from pipeline.errors import PipelineError

MAX_PENDING_PER_WORKER = 4  # tasks in flight per worker: enough to keep it busy, few enough to bound memory
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PARENT_POLL_SECONDS = 0.5  # how often a worker without PR_SET_PDEATHSIG looks for its parent


@dataclass(frozen=True)
class Workers:
    """Where a stage's tasks run: `count` forked processes on this machine, or with `ray_address`
    `count` Ray actors of that cluster (0: one per CPU of the cluster)."""

    count: int
    ray_address: Optional[str] = None


def workers_for(executor: ExecutorConfig) -> Workers:
    """The params' `executor` section as Workers (local with 0 workers: this machine's cores)."""
    if executor.kind == "ray":
        return Workers(executor.workers, executor.address)
    return Workers(executor.workers or os.cpu_count() or 1)


def ordered_parallel_map(fn: Callable, items: Iterable, workers: int | Workers, initializer=None, initargs=()) -> Iterator:
    """`map(fn, items)` over `workers` forked processes (or Ray actors: `ray_map`), in input order,
    with a bounded number of items in flight (items are pulled from `items` only as results are
    taken). One local worker: in this process. Forked workers exit when this process dies, even by
    SIGKILL (see `_start_worker`)."""
    workers = workers if isinstance(workers, Workers) else Workers(workers)
    if workers.ray_address is not None:
        yield from ray_map(fn, items, workers.count, initializer, initargs, workers.ray_address)
        return
    workers = workers.count
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(fn, items)
        return
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                               initargs=(os.getpid(), initializer, initargs))
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= workers * MAX_PENDING_PER_WORKER:
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())
    finally:
        if pending:  # closed early or failed: stop the workers now rather than after their queued tasks
            pool.shutdown(wait=False, cancel_futures=True)
            for process in list((pool._processes or {}).values()):  # no public terminate before Python 3.14
                process.terminate()
        pool.shutdown(wait=True)


def _result(future):
    """A task's result; a worker that died (killed, out of memory) fails the stage in one line,
    where a `multiprocessing.Pool` would wait for the lost task forever."""
    try:
        return future.result()
    except BrokenProcessPool:
        raise PipelineError("a worker process died (killed, or out of memory?); lower executor.workers or "
                            "free memory, then run the stage again") from None


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


class _Actor:
    """A Ray worker: moves to the stage's working directory (the project, at the same path on every
    node: relative paths such as data/vocab then mean the same), runs the caller's initializer once,
    then tasks one at a time."""

    def __init__(self, cwd: str, initializer, initargs):
        os.chdir(cwd)
        if initializer is not None:
            initializer(*initargs)

    def run(self, fn: Callable, item):
        return fn(item)


def ray_map(fn: Callable, items: Iterable, workers: int, initializer, initargs, address: str) -> Iterator:
    """`map(fn, items)` over Ray actors, in input order, `MAX_PENDING_PER_WORKER` tasks per actor in
    flight. `address`: the cluster to join (`auto`: the one `ray start` runs on this machine), or
    `local` to start one for this call alone. The actors die with this process (Ray's ownership)."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        _join(ray, address, workers)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if workers > cpus:  # an actor that can never be placed would hold its tasks, and the stage, forever
            raise PipelineError(f"executor.workers: {workers} actors, but the Ray cluster has {cpus} CPUs (0: one per CPU)")
        count = workers or max(1, cpus)
        actor = ray.remote(num_cpus=1)(_Actor)
        fn, initializer = by_reference(fn), by_reference(initializer)
        pool = ray.util.ActorPool([actor.remote(os.getcwd(), initializer, initargs) for _ in range(count)])
        pending = 0
        for item in items:
            pool.submit(lambda a, value: a.run.remote(fn, value), item)
            pending += 1
            if pending >= count * MAX_PENDING_PER_WORKER:
                yield pool.get_next()
                pending -= 1
        for _ in range(pending):
            yield pool.get_next()
    finally:
        if started:
            ray.shutdown()


def by_reference(fn):
    """`fn`, taken from its module when it was defined in `__main__` (a stage run as `python -m`):
    Ray pickles `__main__`'s functions by value, with a copy of that module's globals as they are
    here, so an initializer's globals (the worker's tokenizer) would never reach the tasks; the same
    function of an imported module is pickled by reference and runs against the actor's globals."""
    if isinstance(fn, functools.partial):
        return functools.partial(by_reference(fn.func), *fn.args, **fn.keywords)
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if getattr(fn, "__module__", None) == "__main__" and spec is not None:
        return getattr(importlib.import_module(spec.name), fn.__qualname__)
    return fn


def import_ray():
    try:
        import ray
        import ray.util
    except ImportError:
        raise PipelineError('executor.kind: ray needs the ray package (pip install -e ".[ray]")') from None
    return ray


def _join(ray, address: str, workers: int) -> None:
    """Connect this process to the cluster at `address`, or start a local one (`local`)."""
    try:
        if address == "local":
            ray.init(num_cpus=workers or None, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except ConnectionError as exc:
        raise PipelineError(f"executor.address: no Ray cluster at {address!r} ({str(exc).splitlines()[0]}); "
                            "start one with `ray start --head`, or set executor.address: local") from None
