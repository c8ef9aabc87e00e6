"""The train data stream: a seeded block order, where the trainer stands in it, and the next steps'
batches gathered on a background thread while the current step runs.

Data order: a seeded permutation of all blocks per epoch; the position is (epoch, index into it).
Each optimizer step takes world_size * batch_size * grad_accum blocks from the stream, rank r the
r-th slice of every micro-batch, so ranks read disjoint blocks. The prefetcher walks the same
order as a plain loop would, so data order and resume do not depend on it.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch

from model.runtime import Dist
from pipeline.blocks import Blocks


@dataclass
class Position:
    """Where the trainer is: optimizer steps done, and the next block in the data stream."""

    step: int = 0
    epoch: int = 0
    index: int = 0


class BlockOrder:
    """A seeded permutation of block rows per epoch; `take` walks the endless stream of epochs."""

    def __init__(self, n_blocks: int, seed: int):
        self.n_blocks = n_blocks
        self.seed = seed
        self._epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)
            self._epoch = epoch
        return self._perm

    def take(self, pos: Position, count: int) -> np.ndarray:
        """The next `count` rows of the stream; advances `pos`."""
        out = []
        while count:
            perm = self.permutation(pos.epoch)
            chunk = perm[pos.index : pos.index + count]
            out.append(chunk)
            count -= len(chunk)
            pos.index += len(chunk)
            if pos.index == self.n_blocks:
                pos.epoch, pos.index = pos.epoch + 1, 0
        return np.concatenate(out)


@dataclass
class StepData:
    """One optimizer step's micro-batches for this rank (CPU tensors, pinned when feeding a GPU),
    and where the stream stands after them."""

    micro_batches: list[dict[str, torch.Tensor]]
    epoch: int
    index: int


def step_data(blocks: Blocks, order: BlockOrder, pos: Position, batch_size: int, grad_accum: int, d: Dist,
              segments: bool, pin: bool) -> StepData:
    """The next step's micro-batches from `pos` (advanced). segments: keep `segment_ids` (document masking)."""
    out = []
    for _ in range(grad_accum):
        rows = order.take(pos, d.world * batch_size)[d.rank * batch_size : (d.rank + 1) * batch_size]
        batch = {k: torch.from_numpy(v) for k, v in blocks.batch(rows).items() if segments or k != "segment_ids"}
        out.append({k: v.pin_memory() for k, v in batch.items()} if pin else batch)
    return StepData(out, pos.epoch, pos.index)


class Prefetcher:
    """Gathers the steps after `start` on a daemon thread, `depth` steps ahead, in stream order.

    `next()` hands them out one by one; an error in the thread is raised there. `close()` stops
    the thread (also when the trainer stops early)."""

    def __init__(self, blocks: Blocks, order: BlockOrder, start: Position, batch_size: int, grad_accum: int, d: Dist,
                 segments: bool, pin: bool, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        pos = Position(start.step, start.epoch, start.index)
        args = (blocks, order, pos, batch_size, grad_accum, d, segments, pin)
        self._thread = threading.Thread(target=self._fill, args=args, name="tinygpt-prefetch", daemon=True)
        self._thread.start()

    def _fill(self, *args) -> None:
        try:
            while not self._stop.is_set():
                self._put(step_data(*args))
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(exc)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next(self) -> StepData:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
