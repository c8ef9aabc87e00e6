"""An ordered, bounded process pool: what the stages that read whole sources share."""

from __future__ import annotations

import multiprocessing
from collections import deque
from typing import Callable, Iterable, Iterator

MAX_PENDING_PER_WORKER = 4  # tasks in flight per worker: enough to keep it busy, few enough to bound memory


def ordered_parallel_map(fn: Callable, items: Iterable, workers: int, initializer=None, initargs=()) -> Iterator:
    """`map(fn, items)` over `workers` forked processes, in input order, with a bounded number of items
    in flight (items are pulled from `items` only as results are taken). One worker: in this process."""
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(fn, items)
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=initializer, initargs=initargs) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) >= workers * MAX_PENDING_PER_WORKER:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
