"""Classification metrics and post-hoc calibration fitting, free of any framework.

Everything here works on ``(y_true, probs)`` arrays so that it can be unit-tested against
hand-computed values and shared by :mod:`inference.train` and :mod:`inference.evaluate`.
``probs`` are always the *class* probabilities the app shows (``(N, n_classes)``, after
:func:`inference.heads.apply_head`); predictions use the spec's rule
(:func:`inference.heads.predicted_index`: argmax, or the operating threshold of binary heads).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from inference.heads import predicted_index
from inference.registry import Calibration, Head, ModelSpec

__all__ = [
    "classification_metrics",
    "confusion_matrix",
    "expected_calibration_error",
    "fit_calibration",
    "fit_platt",
    "fit_temperature",
    "nll",
    "reliability_bins",
    "roc_auc_binary",
    "threshold_for_sensitivity",
]

_EPS = 1e-7


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``cm[i, j]`` = number of samples of true class ``i`` predicted as ``j``."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def reliability_bins(
    y_true: np.ndarray, probs: np.ndarray, y_pred: np.ndarray | None = None, n_bins: int = 15
) -> list[dict[str, float]]:
    """Equal-width bins of top-class confidence: per bin its count, mean confidence, accuracy.

    The confidence of a sample is the probability of the class it is predicted as (argmax by
    default, or ``y_pred`` when a threshold decides). Bins are ``(lo, hi]``, the first ``[0, hi]``.
    """
    probs = np.asarray(probs, np.float64)
    pred = np.argmax(probs, axis=1) if y_pred is None else np.asarray(y_pred, np.int64)
    conf = probs[np.arange(len(pred)), pred]
    correct = (pred == np.asarray(y_true, np.int64)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        mask = idx == b
        n = int(mask.sum())
        out.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "count": n,
                "confidence": float(conf[mask].mean()) if n else 0.0,
                "accuracy": float(correct[mask].mean()) if n else 0.0,
            }
        )
    return out


def expected_calibration_error(
    y_true: np.ndarray, probs: np.ndarray, y_pred: np.ndarray | None = None, n_bins: int = 15
) -> float:
    """ECE of the top-class confidence: ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|`` over 15 bins."""
    bins = reliability_bins(y_true, probs, y_pred, n_bins)
    total = sum(b["count"] for b in bins)
    if total == 0:
        return 0.0
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins))


def roc_auc_binary(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count half); None with one class only."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    # average ranks for ties
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    spec: ModelSpec | Sequence[str],
    *,
    n_bins: int = 15,
) -> dict[str, Any]:
    """All evaluation metrics for one model on one labelled set.

    Args:
        y_true: true class indices, in the spec's class order.
        probs: ``(N, n_classes)`` calibrated class probabilities.
        spec: the model spec (its head and operating threshold decide the predictions), or
            just the class ids (then the prediction is the argmax, threshold 0.5).

    Returns:
        ``accuracy``, ``balanced_accuracy`` (mean per-class recall), ``ece`` (15-bin, top
        class), ``per_class`` ({class id: precision, recall, f1, support}),
        ``confusion_matrix`` (rows = true class), ``roc_auc`` ({class id: one-vs-rest AUC,
        "macro": their mean}), ``n``; for two classes also ``sensitivity`` and
        ``specificity`` of the positive class and the ``threshold`` used.
    """
    y = np.asarray(y_true, np.int64)
    p = np.asarray(probs, np.float64)
    if isinstance(spec, ModelSpec):
        class_ids = spec.class_ids
        y_pred = predicted_index(p, spec)
        binary_threshold = spec.threshold if spec.head in (Head.SIGMOID_SINGLE, Head.BINARY_CLASSIFIER) else 0.5
        positive = spec.class_ids.index(spec.positive_class) if spec.positive_class else 1
    else:
        class_ids = list(spec)
        y_pred = np.argmax(p, axis=1)
        binary_threshold, positive = 0.5, 1
    k = len(class_ids)
    if p.ndim != 2 or p.shape[1] != k or p.shape[0] != y.shape[0]:
        raise ValueError(f"probs must be (N, {k}) for N labels, got {p.shape} for {y.shape[0]}")
    cm = confusion_matrix(y, y_pred, k)
    per_class: dict[str, dict[str, float]] = {}
    recalls = []
    for i, cid in enumerate(class_ids):
        tp = float(cm[i, i])
        support = float(cm[i].sum())
        predicted = float(cm[:, i].sum())
        precision = _safe_div(tp, predicted)
        recall = _safe_div(tp, support)
        f1 = _safe_div(2 * precision * recall, precision + recall)
        per_class[cid] = {"precision": precision, "recall": recall, "f1": f1, "support": int(support)}
        if support:
            recalls.append(recall)
    aucs: dict[str, float | None] = {cid: roc_auc_binary(y == i, p[:, i]) for i, cid in enumerate(class_ids)}
    valid = [a for a in aucs.values() if a is not None]
    aucs["macro"] = float(np.mean(valid)) if valid else None
    out: dict[str, Any] = {
        "n": int(y.shape[0]),
        "accuracy": _safe_div(float(np.trace(cm)), float(cm.sum())),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else 0.0,
        "ece": expected_calibration_error(y, p, y_pred, n_bins),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "roc_auc": aucs,
    }
    if k == 2:
        neg = 1 - positive
        out["positive_class"] = class_ids[positive]
        out["sensitivity"] = per_class[class_ids[positive]]["recall"]
        out["specificity"] = per_class[class_ids[neg]]["recall"]
        out["threshold"] = float(binary_threshold)
    return out


# ----------------------------------------------------------------------------- calibration


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def nll(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    p = np.asarray(probs, np.float64)
    y = np.asarray(y_true, np.int64)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], _EPS, 1.0))))


def fit_temperature(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Temperature ``T`` minimising the NLL of ``softmax(log(probs) / T)`` (softmax heads)."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y_true, np.int64)
    logp = np.log(np.clip(np.asarray(probs, np.float64), _EPS, None))

    def loss(log_t: float) -> float:
        z = logp / math.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        log_softmax = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-np.mean(log_softmax[np.arange(len(y)), y]))

    res = minimize_scalar(loss, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(res.x))


def fit_platt(targets: np.ndarray, raw_probs: np.ndarray) -> tuple[float, float]:
    """Platt ``(a, b)`` minimising the binary NLL of ``sigmoid(a * logit(raw) + b)``.

    ``targets`` and ``raw_probs`` have the same shape (0/1 targets of each sigmoid output);
    ``sigmoid_multi`` heads fit one shared ``(a, b)`` over all their outputs.
    """
    from scipy.optimize import minimize

    t = np.asarray(targets, np.float64).ravel()
    z = _logit(np.asarray(raw_probs, np.float64).ravel())

    def loss_grad(params: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = params
        s = a * z + b
        # log(1 + exp(s)) - t * s, numerically stable
        loss = np.logaddexp(0.0, s) - t * s
        g = 1.0 / (1.0 + np.exp(-s)) - t
        return float(loss.mean()), np.array([float((g * z).mean()), float(g.mean())])

    res = minimize(loss_grad, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    a, b = (float(v) for v in res.x)
    return a, b


def fit_calibration(head: Head, y_true: np.ndarray, raw: np.ndarray, fitted_on: str | None = None) -> Calibration:
    """Fit the head's calibration on raw model outputs (probabilities) and true class indices."""
    y = np.asarray(y_true, np.int64)
    raw = np.asarray(raw, np.float64)
    if head is Head.SOFTMAX:
        return Calibration(temperature=fit_temperature(y, raw), fitted_on=fitted_on)
    if head is Head.SIGMOID_MULTI:
        onehot = np.eye(raw.shape[1])[y]
        a, b = fit_platt(onehot, raw)
        return Calibration(platt_a=a, platt_b=b, fitted_on=fitted_on)
    if head in (Head.SIGMOID_SINGLE, Head.BINARY_CLASSIFIER):
        a, b = fit_platt(y.astype(np.float64), raw.reshape(len(y), -1)[:, 0])
        return Calibration(platt_a=a, platt_b=b, fitted_on=fitted_on)
    raise ValueError(f"a {head.value} head has no calibration")


def threshold_for_sensitivity(y_true: np.ndarray, p_pos: np.ndarray, target: float) -> float:
    """The largest threshold on ``p_pos`` that still gives sensitivity >= ``target``.

    ``y_true`` is 1 for the positive class. The threshold sits halfway between the chosen
    positive score and the next lower score, so it is not tied to one sample's exact value.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(p_pos, np.float64)
    pos = np.sort(s[y])
    if pos.size == 0:
        return 0.5
    # keep at least ceil(target * n_pos) positives at or above the threshold
    k = math.ceil(target * pos.size - 1e-9)
    k = min(max(k, 1), pos.size)
    cut = pos[pos.size - k]
    below = s[s < cut]
    thr = (cut + below.max()) / 2.0 if below.size else cut
    return float(min(max(thr, 0.0), 1.0))
