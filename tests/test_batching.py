"""Micro-batching: concurrent requests share batches and get exactly their own results."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference.backends.base import BatchOutput, Prediction
from inference.batching import MicroBatcher
from inference.cache import PredictionCache
from inference.manager import ModelManager
from inference.registry import Registry
from inference.service import Analyzer
from tests.conftest import image_bytes


def _echo(images: list[np.ndarray]) -> BatchOutput:
    preds = [Prediction(label=str(int(img[0, 0, 0])), probabilities={"v": float(img[0, 0, 0])}) for img in images]
    return BatchOutput(preds, {"forward": 1.0})


def _run_concurrently(n: int, fn: Callable[[int], Any]) -> list[Any]:
    results: list[Any] = [None] * n
    barrier = threading.Barrier(n)

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_submits_are_batched_and_each_gets_its_own_result() -> None:
    b = MicroBatcher(_echo, max_batch=8, max_wait_ms=50)
    out = _run_concurrently(8, lambda i: b.submit(np.full((2, 2, 3), i, np.uint8)))
    for i, (batch, index, waited) in enumerate(out):
        assert batch.predictions[index].label == str(i)
        assert waited >= 0
    assert b.items == 8
    assert b.batches < 8
    b.close()


def test_batch_size_is_bounded() -> None:
    sizes: list[int] = []

    def fn(images: list[np.ndarray]) -> BatchOutput:
        sizes.append(len(images))
        return _echo(images)

    b = MicroBatcher(fn, max_batch=3, max_wait_ms=50)
    _run_concurrently(10, lambda i: b.submit(np.full((1, 1, 3), i, np.uint8)))
    assert max(sizes) <= 3
    assert sum(sizes) == 10
    b.close()


def test_an_error_reaches_every_waiter_and_the_batcher_survives() -> None:
    calls = {"n": 0}

    def flaky(images: list[np.ndarray]) -> BatchOutput:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("boom")
        return _echo(images)

    b = MicroBatcher(flaky, max_batch=4, max_wait_ms=1)
    with pytest.raises(ValueError, match="boom"):
        b.submit(np.zeros((1, 1, 3), np.uint8))
    batch, index, _ = b.submit(np.full((1, 1, 3), 5, np.uint8))
    assert batch.predictions[index].label == "5"
    b.close()


def test_adaptive_batcher_runs_a_lone_request_at_once() -> None:
    b = MicroBatcher(_echo, max_batch=8, max_wait_ms=3000, adaptive=True)
    t = time.perf_counter()
    batch, index, waited = b.submit(np.full((1, 1, 3), 7, np.uint8))
    assert batch.predictions[index].label == "7"
    # nobody else announced itself, so the 3 s window is not waited out
    assert time.perf_counter() - t < 1.5
    assert waited < 1500
    b.close()


def _submit_in_background(b: MicroBatcher, value: int) -> tuple[threading.Thread, list[Any]]:
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(b.submit(np.full((1, 1, 3), value, np.uint8))))
    thread.start()
    return thread, results


def test_adaptive_batcher_waits_for_announced_requests() -> None:
    b = MicroBatcher(_echo, max_batch=8, max_wait_ms=3000, adaptive=True)
    late = b.expect()
    first, results = _submit_in_background(b, 1)
    time.sleep(0.2)  # the second request is still "decoding"
    with late:
        second = late.submit(np.full((1, 1, 3), 2, np.uint8))
    first.join()
    assert len(second[0].predictions) == 2  # both went in one batch
    assert results[0][0] is second[0]
    assert b.batches == 1
    b.close()


def test_adaptive_batcher_stops_waiting_for_a_request_that_failed() -> None:
    b = MicroBatcher(_echo, max_batch=8, max_wait_ms=5000, adaptive=True)
    doomed = b.expect()
    t = time.perf_counter()
    first, results = _submit_in_background(b, 1)
    time.sleep(0.1)
    with pytest.raises(ValueError, match="corrupt"), doomed:
        raise ValueError("corrupt image")  # the request dies before submitting
    first.join()
    assert time.perf_counter() - t < 3.0  # not the 5 s window
    assert len(results[0][0].predictions) == 1
    b.close()


def test_results_are_identical_with_batching_on_and_off(tiny_registry_file: Path, tiny_model_dir: Path) -> None:
    reg = Registry.from_yaml(tiny_registry_file)
    manager = ModelManager(reg, tiny_model_dir, device="cpu")
    rng = np.random.default_rng(11)
    images = [image_bytes(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)) for i in range(8)]

    def analyse_all(batching: bool) -> list[Any]:
        an = Analyzer(
            manager,
            PredictionCache(None, size_limit_bytes=1),
            max_bytes=2**22,
            max_pixels=10**6,
            batching=batching,
            batch_max_size=8,
            batch_max_wait_ms=30,
        )
        try:
            return _run_concurrently(8, lambda i: an.analyze("nested", images[i], explain=True))
        finally:
            an.close()

    off, on = analyse_all(False), analyse_all(True)
    assert max(r.timing_ms.get("batch_size", 1) for r in on) > 1
    for a, b in zip(off, on, strict=True):
        pa, pb = a.prediction, b.prediction
        assert pa.label == pb.label
        np.testing.assert_allclose(list(pa.probabilities.values()), list(pb.probabilities.values()), atol=1e-5)
        np.testing.assert_allclose(pa.explanation, pb.explanation, atol=1e-5)
