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
    if prediction.explanation_kind == "feature_contributions":
        return render_feature_contributions(
            expl,
            scored_class=str(prediction.extra.get("scored_class", "class 1")),
            names=contribution_names(prediction),
        )
    raise ValueError(f"no renderer for explanation kind {prediction.explanation_kind!r}")


def contribution_names(prediction: Prediction) -> list[str] | None:
    """Readable feature names for a prediction's contributions, from its recorded feature set
    (conjunctiva model); None for the palm model, whose features are its histogram bins."""
    feature_set = prediction.extra.get("feature_set")
    if feature_set is None:
        return None
    from inference.backends.conjunctiva_features import feature_names

    return feature_names(str(feature_set))


def render_feature_contributions(
    contributions: np.ndarray, *, scored_class: str, top: int = 15, names: list[str] | None = None
) -> np.ndarray:
    """A bar chart of the ``top`` features by absolute contribution, as RGB uint8.

    Bars to the right push towards ``scored_class``, bars to the left away from it. Features
    are labelled with ``names`` or, without them, as the palm model's histogram bins (H, S and V
    ranges in OpenCV units).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from inference.backends.hsv_histogram import bin_label

    values = np.asarray(contributions, dtype=np.float64).ravel()
    order = np.argsort(-np.abs(values), kind="stable")[:top][::-1]
    fig = Figure(figsize=(7.0, 0.32 * len(order) + 1.3), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = ["#c0392b" if values[i] > 0 else "#2471a3" for i in order]
    ax.barh(range(len(order)), values[order], color=colours)
    if names is not None and len(names) != values.size:
        raise ValueError(f"{len(names)} feature names for {values.size} contributions")
    labels = [names[int(i)] if names is not None else bin_label(int(i)) for i in order]
    ax.set_yticks(range(len(order)), labels, fontsize=8)
    ax.axvline(0.0, color="#444444", linewidth=0.8)
    ax.set_xlabel(f"contribution to the log-odds of {scored_class}")
    what = "colour features" if names is not None else "colour-histogram bins"
    ax.set_title(f"Top {len(order)} {what} (right: towards {scored_class})", fontsize=9)
    fig.tight_layout()
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])
