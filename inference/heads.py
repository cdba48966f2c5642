"""Head postprocessing: raw model outputs -> calibrated class probabilities.

Kept free of any framework so the app and ``inference.evaluate`` share exactly one path.
Models may output probabilities (the original Keras models end in softmax/sigmoid); we go
back to logits with ``log`` / ``logit`` so that temperature and Platt scaling apply.
"""

from __future__ import annotations

import numpy as np

from inference.registry import Calibration, Head, ModelSpec

_EPS = 1e-7


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def apply_head(raw: np.ndarray, head: Head, calibration: Calibration | None = None) -> np.ndarray:
    """Turn raw outputs ``(N, k)`` (probabilities) into calibrated class probabilities.

    Returns ``(N, n_classes)``: for ``sigmoid_single`` / ``binary_classifier`` the two
    columns are ``[1 - p, p]`` with ``p`` the probability of ``classes[1]``.
    """
    cal = calibration or Calibration()
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim == 1:
        raw = raw[:, None]
    if head is Head.SOFTMAX:
        # log p differs from the logits by a per-row constant, which softmax ignores.
        logp = np.log(np.clip(raw, _EPS, None))
        return softmax(logp / cal.temperature)
    if head is Head.SIGMOID_MULTI:
        return _sigmoid(cal.platt_a * _logit(raw) + cal.platt_b)
    if head in (Head.SIGMOID_SINGLE, Head.BINARY_CLASSIFIER):
        if raw.shape[1] != 1:
            raise ValueError(f"{head.value} head expects one output per image, got {raw.shape[1]}")
        p = _sigmoid(cal.platt_a * _logit(raw[:, 0]) + cal.platt_b)
        return np.stack([1.0 - p, p], axis=1)
    raise ValueError(f"head {head.value!r} has no class probabilities")


def labelled(raw: np.ndarray, spec: ModelSpec) -> list[tuple[str, dict[str, float]]]:
    """Per row: (predicted class id, {class id: calibrated probability}) in the spec's order.
    The one path from raw outputs to what every image backend reports."""
    probs = apply_head(raw, spec.head, spec.calibration)
    idx = predicted_index(probs, spec)
    ids = spec.class_ids
    return [(ids[int(idx[i])], {c: float(probs[i, j]) for j, c in enumerate(ids)}) for i in range(probs.shape[0])]


def predicted_index(probs: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Index of the predicted class per row; binary heads use the spec's operating threshold."""
    if spec.head in (Head.SIGMOID_SINGLE, Head.BINARY_CLASSIFIER):
        return (probs[:, 1] >= spec.threshold).astype(np.int64)
    return np.argmax(probs, axis=1)
