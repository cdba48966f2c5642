"""Render a prediction's explanation, whatever produced it.

Kept apart from the backends so that a cached prediction can be rendered without loading
the model that made it.
"""

from __future__ import annotations

import numpy as np

from inference.backends.base import Prediction
from inference.overlay import overlay_heatmap


def render_explanation(pixels: np.ndarray, prediction: Prediction, *, opacity: float, colormap: str) -> np.ndarray:
    """An RGB uint8 image showing why the model said what it said."""
    expl = prediction.explanation
    if expl is None:
        return pixels
    if prediction.explanation_kind == "gradcam":
        return overlay_heatmap(pixels, expl, opacity, colormap)
    raise ValueError(f"no renderer for explanation kind {prediction.explanation_kind!r}")
