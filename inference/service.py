"""The analysis pipeline shared by the UI and the REST API.

bytes -> (size check, sha256 once) -> cache lookup -> decode once -> shared model ->
prediction -> cache store. A cache hit never touches the model.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from inference.backends.base import BatchOutput, Prediction
from inference.batching import MicroBatcher, Ticket
from inference.cache import PredictionCache, cache_key
from inference.errors import ImageTooLarge, InvalidInput, ModelExperimental
from inference.explain import render_explanation
from inference.imaging import DecodedImage, decode_image, sha256_bytes, to_png_bytes
from inference.manager import ModelManager
from inference.overlay import display_image
from inference.registry import ModelSpec

log = logging.getLogger(__name__)

RESEARCH_NOTICE = "Research use only, not a diagnosis."


@dataclass
class AnalysisResult:
    """A prediction with everything a tab or an API response needs."""

    spec: ModelSpec
    prediction: Prediction
    cached: bool
    sha256: str
    timing_ms: dict[str, float]
    image: DecodedImage | None = None
    cache_key: str = ""

    @property
    def model_id(self) -> str:
        return self.spec.id

    @property
    def label(self) -> str:
        return self.prediction.label

    @property
    def label_name(self) -> str:
        return self.spec.class_names.get(self.label, self.label)

    @property
    def probabilities(self) -> dict[str, float]:
        return self.prediction.probabilities

    def display_pixels(self, max_side: int = 768) -> np.ndarray | None:
        return None if self.image is None else display_image(self.image.pixels, max_side)

    def explanation_image(self, opacity: float, colormap: str = "jet", max_side: int = 768) -> np.ndarray | None:
        """The explanation rendered over the (display-sized) input, or None without one."""
        pixels = self.display_pixels(max_side)
        if pixels is None or self.prediction.explanation is None:
            return None
        return render_explanation(pixels, self.prediction, opacity=opacity, colormap=colormap)


class Analyzer:
    """Runs one analysis; thread-safe, shared by every request."""

    def __init__(
        self,
        manager: ModelManager,
        cache: PredictionCache,
        *,
        max_bytes: int,
        max_pixels: int,
        batching: bool = False,
        batch_max_size: int = 8,
        batch_max_wait_ms: float = 3.0,
    ) -> None:
        self.manager = manager
        self.cache = cache
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.batching = batching
        self.batch_max_size = batch_max_size
        self.batch_max_wait_ms = batch_max_wait_ms
        self._batchers: dict[tuple[str, bool], MicroBatcher] = {}
        self._batchers_lock = threading.Lock()
        self._observers: list[Callable[[AnalysisResult], None]] = []

    def add_observer(self, fn: Callable[[AnalysisResult], None]) -> None:
        """Call ``fn`` with every finished analysis (metrics, audit); it must not raise."""
        self._observers.append(fn)

    def _done(self, result: AnalysisResult) -> AnalysisResult:
        for fn in self._observers:
            try:
                fn(result)
            except Exception:  # an observer must never fail a user's analysis
                log.warning("analysis observer %r failed", fn, exc_info=True)
        return result

    def _batcher(self, model_id: str, explain: bool) -> MicroBatcher:
        # Callers pass a registry spec's id, so there are at most 2 x (image models) batchers,
        # each one idle thread; they live as long as the Analyzer (closed in close()).
        key = (model_id, explain)
        batcher = self._batchers.get(key)  # lock-free on the hot path once created
        if batcher is None:
            with self._batchers_lock:
                batcher = self._batchers.get(key)
                if batcher is None:

                    def run(images: list[np.ndarray]) -> BatchOutput:
                        return self.manager.get(model_id).predict(images, explain=explain)

                    batcher = MicroBatcher(
                        run,
                        max_batch=self.batch_max_size,
                        max_wait_ms=self.batch_max_wait_ms,
                        name=f"{model_id}-batch",
                        adaptive=True,
                    )
                    self._batchers[key] = batcher
        return batcher

    def _predict(
        self, model_id: str, pixels: np.ndarray, explain: bool, ticket: Ticket | None = None
    ) -> tuple[Prediction, dict[str, float]]:
        if not self.batching:
            out = self.manager.get(model_id).predict([pixels], explain=explain)
            return out.predictions[0], dict(out.timing_ms)
        submit = ticket.submit if ticket is not None else self._batcher(model_id, explain).submit
        out, index, waited = submit(pixels)
        timing = dict(out.timing_ms)
        timing["queue_wait"] = waited
        timing["batch_size"] = float(len(out.predictions))
        return out.predictions[index], timing

    def warm_up(self, colormap: str = "jet") -> None:
        """Pay one-off costs (colormap tables, PNG encoder) at start-up, not in a request."""
        from inference.overlay import colormap_lut, overlay_heatmap

        colormap_lut(colormap)
        to_png_bytes(overlay_heatmap(np.zeros((8, 8, 3), np.uint8), np.ones((2, 2), np.float32), 0.5, colormap))

    def heatmap_png(
        self, result: AnalysisResult, data: bytes, *, filename: str | None, opacity: float, colormap: str
    ) -> bytes | None:
        """The explanation overlay as PNG bytes, cached like the prediction itself, so a
        repeated request neither decodes nor renders nor encodes again."""
        if result.prediction.explanation is None:
            return None
        key = f"{result.cache_key}:render:{opacity:.3f}:{colormap}"
        cached = self.cache.get_bytes(key)
        if cached is not None:
            return cached
        if result.image is None:
            result.image = self.decode(data, filename)
        img = result.explanation_image(opacity, colormap)
        if img is None:
            return None
        png = to_png_bytes(img)
        self.cache.set_bytes(key, png)
        return png

    def close(self) -> None:
        for batcher in self._batchers.values():
            batcher.close()

    def decode(self, data: bytes, filename: str | None = None) -> DecodedImage:
        return decode_image(data, filename=filename, max_bytes=self.max_bytes, max_pixels=self.max_pixels)

    def analyze(
        self,
        model_id: str,
        data: bytes,
        *,
        filename: str | None = None,
        explain: bool = True,
        need_pixels: bool = True,
    ) -> AnalysisResult:
        """Analyse one uploaded file with one model.

        ``need_pixels=False`` lets a cache hit skip decoding entirely (REST without heatmap).
        """
        spec = self.manager.registry[model_id]
        if not spec.is_image_model:
            raise InvalidInput(f"{spec.display_name} does not analyse images")
        disabled = self.manager.disabled_message(spec.id)
        if disabled is not None:  # before the cache: a result kept from when it was enabled is not served
            raise ModelExperimental(disabled)
        if not data:
            raise InvalidInput("the uploaded file is empty; upload a PNG, JPEG, BMP, TIFF, WebP or DICOM image")
        if len(data) > self.max_bytes:
            raise ImageTooLarge(f"the file is {len(data) / 2**20:.1f} MB; the limit is {self.max_bytes / 2**20:.0f} MB")
        timing: dict[str, float] = {}
        t0 = time.perf_counter()
        sha = sha256_bytes(data)
        key = cache_key(sha, spec.id, spec.version, explain)
        hit = self.cache.get(key)
        timing["cache_lookup"] = (time.perf_counter() - t0) * 1e3
        image: DecodedImage | None = None
        # Tell the batcher a request is coming before decoding, so that it waits for this one
        # only while it is on its way (adaptive batching).
        ticket = self._batcher(spec.id, explain).expect() if hit is None and self.batching else None
        with ticket or contextlib.nullcontext():
            if hit is None or need_pixels:
                t = time.perf_counter()
                image = self.decode(data, filename)
                timing["decode"] = (time.perf_counter() - t) * 1e3
            if hit is not None:
                timing["total"] = (time.perf_counter() - t0) * 1e3
                return self._done(AnalysisResult(spec, hit, True, sha, timing, image, cache_key=key))
            assert image is not None
            if spec.id not in self.manager.loaded():
                # First use in this process: load here (typed errors surface now, not inside a
                # batch) and report the time apart rather than blame the model for it.
                t = time.perf_counter()
                self.manager.get(spec.id)
                timing["model_load"] = (time.perf_counter() - t) * 1e3
            pred, model_timing = self._predict(spec.id, image.model_pixels(spec.input.keep_alpha), explain, ticket)
        timing.update(model_timing)
        self.cache.set(key, pred)
        timing["total"] = (time.perf_counter() - t0) * 1e3
        return self._done(AnalysisResult(spec, pred, False, sha, timing, image, cache_key=key))
