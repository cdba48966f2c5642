"""Micro-batching: concurrent requests for the same model share one batched forward pass.

Request threads (FastAPI's thread pool, Gradio's workers) call :meth:`MicroBatcher.submit`
and block on a future. One dispatcher thread per batcher takes the first waiting request,
drains whatever else is already queued, waits at most ``max_wait_ms`` for more while the
batch is not full, then runs one batched call and hands each request its own result.
Under load, requests that queue up while a batch runs go together in the next one.

With ``adaptive=True`` the dispatcher waits only for requests that have announced
themselves (:meth:`MicroBatcher.expect`, taken by the caller before it decodes the image):
a lone request on an idle model runs at once instead of paying ``max_wait_ms``, and
requests arriving together still share a batch. Without it, every batch waits up to
``max_wait_ms``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from inference.backends.base import BatchOutput

log = logging.getLogger(__name__)

BatchFn = Callable[[list[np.ndarray]], BatchOutput]


@dataclass
class _Item:
    pixels: np.ndarray
    future: Future[tuple[BatchOutput, int, float]]
    enqueued: float


class Ticket:
    """A request on its way to a batcher (see :meth:`MicroBatcher.expect`)."""

    def __init__(self, batcher: MicroBatcher) -> None:
        self._batcher = batcher
        self._open = True

    def submit(self, pixels: np.ndarray) -> tuple[BatchOutput, int, float]:
        self._release()
        return self._batcher.submit(pixels)

    def _release(self) -> None:
        if self._open:
            self._open = False
            self._batcher._arrived()

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()  # the request failed before submitting (bad image): stop expecting it


class MicroBatcher:
    """Gathers single-image requests into bounded batches for one callable."""

    def __init__(
        self,
        fn: BatchFn,
        *,
        max_batch: int = 8,
        max_wait_ms: float = 3.0,
        name: str = "batcher",
        adaptive: bool = False,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms) / 1e3
        self.adaptive = adaptive
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._expected = 0  # announced requests not yet submitted (adaptive mode)
        self._expected_lock = threading.Lock()
        self._closed = False
        self.batches = 0
        self.items = 0
        self._thread = threading.Thread(target=self._run, name=f"doctorai-{name}", daemon=True)
        self._thread.start()

    def expect(self) -> Ticket:
        """Announce a request that will be submitted soon; use as a context manager and
        submit through the ticket. In adaptive mode the dispatcher waits only for these."""
        with self._expected_lock:
            self._expected += 1
        return Ticket(self)

    def _arrived(self) -> None:
        with self._expected_lock:
            self._expected -= 1

    def submit(self, pixels: np.ndarray) -> tuple[BatchOutput, int, float]:
        """Run ``pixels`` in the next batch; returns (batch output, own index, queue wait ms)."""
        if self._closed:
            raise RuntimeError("batcher is closed")
        fut: Future[tuple[BatchOutput, int, float]] = Future()
        self._queue.put(_Item(pixels, fut, time.perf_counter()))
        return fut.result()

    def _collect(self, first: _Item) -> list[_Item]:
        batch = [first]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.perf_counter()
            if self.adaptive and self._expected <= 0:
                remaining = 0.0  # nobody else is on the way: take what is queued and go
            try:
                if remaining <= 0:
                    item = self._queue.get_nowait()
                else:
                    # in adaptive mode wake up now and then to notice that the announced
                    # requests are gone (failed) rather than sleep out the whole wait
                    step = min(remaining, 0.0005) if self.adaptive else remaining
                    try:
                        item = self._queue.get(timeout=step)
                    except queue.Empty:
                        if self.adaptive and time.perf_counter() < deadline:
                            continue
                        raise
            except queue.Empty:
                break
            if item is None:  # close() sentinel: finish this batch, then stop
                self._closed = True
                break
            batch.append(item)
        return batch

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = self._collect(first)
            started = time.perf_counter()
            try:
                out = self.fn([it.pixels for it in batch])
            except BaseException as exc:  # every waiter gets the error; the dispatcher survives
                for it in batch:
                    it.future.set_exception(exc)
            else:
                self.batches += 1
                self.items += len(batch)
                for i, it in enumerate(batch):
                    it.future.set_result((out, i, (started - it.enqueued) * 1e3))
            if self._closed:
                return

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
