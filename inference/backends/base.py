"""The one model contract every backend implements.

Like a transformers ``Pipeline``: subclasses implement :meth:`preprocess`, :meth:`forward`,
:meth:`postprocess` and :meth:`explain`; the base class owns the template :meth:`predict`
and its per-stage timing. Backends know nothing about HTTP, Gradio or caching.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from inference.registry import ModelSpec

DevicePolicy = Literal["auto", "cpu", "gpu"]


@dataclass
class Prediction:
    """One image's result, before any rendering."""

    label: str  # class id of the predicted class
    probabilities: dict[str, float]  # class id -> probability, in the spec's class order
    explanation: np.ndarray | None = None  # Grad-CAM map in [0, 1], or per-feature contributions
    explanation_kind: str | None = None  # "gradcam" | "feature_contributions"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchOutput:
    predictions: list[Prediction]
    timing_ms: dict[str, float]


class Backend(ABC):
    """A loaded model. One instance per model per process, shared by every user."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @classmethod
    @abstractmethod
    def load(cls, spec: ModelSpec, weights: Path, device: DevicePolicy) -> Backend:
        """Load weights from disk. Raise ``ModelLoadFailed`` with a readable reason."""

    @abstractmethod
    def preprocess(self, images: Sequence[np.ndarray]) -> Any:
        """RGB uint8 arrays (H, W, 3) -> the model's input batch."""

    @abstractmethod
    def forward(self, batch: Any, explain: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Run the model: raw outputs ``(N, k)`` and, if ``explain``, the raw explanations."""

    @abstractmethod
    def postprocess(self, raw: np.ndarray, explanations: np.ndarray | None) -> list[Prediction]:
        """Raw outputs -> calibrated, labelled predictions."""

    def explain(self, pixels: np.ndarray, prediction: Prediction, *, opacity: float, colormap: str) -> np.ndarray:
        """Render ``prediction``'s explanation as an RGB uint8 image (heatmap overlay, chart).

        The renderers live in ``inference.explain`` so a cached prediction can be drawn without
        loading its model; override only for a backend-specific view."""
        from inference.explain import render_explanation  # explain imports this module

        return render_explanation(pixels, prediction, opacity=opacity, colormap=colormap)

    def warm_up(self) -> None:
        """Do one-off work (tracing, allocation) at load time rather than in a request."""
        return None

    def memory_bytes(self) -> int:
        """Approximate resident size, used by the manager's memory budget."""
        return 0

    def close(self) -> None:
        """Release what the model holds."""
        return None

    def _prepare(self, images: Sequence[np.ndarray]) -> tuple[Any, Any]:
        """``preprocess`` plus whatever :meth:`_finish` needs per image (default: nothing)."""
        return self.preprocess(images), None

    def _finish(self, preds: list[Prediction], context: Any) -> list[Prediction]:
        """Adjust predictions with :meth:`_prepare`'s context (e.g. place heatmaps back)."""
        return preds

    def predict(self, images: Sequence[np.ndarray], explain: bool = True) -> BatchOutput:
        """preprocess -> forward -> postprocess, timed per stage."""
        t0 = time.perf_counter()
        batch, context = self._prepare(images)
        t1 = time.perf_counter()
        raw, expl = self.forward(batch, explain)
        t2 = time.perf_counter()
        preds = self._finish(self.postprocess(raw, expl), context)
        t3 = time.perf_counter()
        timing = {
            "preprocess": (t1 - t0) * 1e3,
            "forward": (t2 - t1) * 1e3,
            "postprocess": (t3 - t2) * 1e3,
        }
        return BatchOutput(preds, timing)
