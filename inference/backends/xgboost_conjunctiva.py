"""Conjunctiva anaemia screening: masked colour features -> XGBoost class + haemoglobin estimate.

Same family as the palm backend (:mod:`inference.backends.xgboost_palm`): native JSON/UBJ
boosters only (a pickle is refused), the positive margin's class recorded in the booster, and
the explanation is each feature's contribution to the classifier's margin (``pred_contribs``).

What it adds:

* the input is the RGBA crop (``input.keep_alpha: true`` in the spec makes the analyzer pass
  the alpha channel); features are computed over the opaque tissue only
  (:mod:`inference.backends.conjunctiva_features`). An upload without alpha is accepted: the
  non-background region (or the whole frame) is used, and the prediction carries a note;
* a second booster, an XGBoost regressor of haemoglobin (g/dL), named with its sha256 in the
  spec's ``options.estimate``; its prediction interval is the point estimate plus or minus a
  split-conformal half-width measured on hospital-grouped cross-validation residuals;
* an ``agreement`` between the two: the class says anaemic while the estimate is at or above
  the anaemia cut-off (or the reverse) is reported, never silently resolved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.backends.base import Backend, DevicePolicy, Prediction
from inference.backends.conjunctiva_features import (
    FEATURE_SETS,
    Tissue,
    feature_names,
    features_of_tissue,
    tissue,
)
from inference.backends.xgboost_palm import load_booster, margin_sign
from inference.errors import ModelLoadFailed
from inference.heads import labelled
from inference.registry import ModelSpec, file_sha256

FEATURE_SET_ATTR = "doctorai_feature_set"
TARGET_ATTR = "doctorai_target"

SOURCE_NOTES: dict[str, str] = {
    "alpha": "",
    "foreground": (
        "This image has no transparency: the model expects a segmented conjunctiva crop (RGBA PNG, "
        "tissue opaque, the rest transparent). The non-background region was used instead; accuracy "
        "on such images is lower (see the model card)."
    ),
    "whole_image": (
        "This image has no transparency and no separable background: the model expects a segmented "
        "conjunctiva crop (RGBA PNG, tissue opaque, the rest transparent). The whole frame was used, "
        "skin, sclera and lashes included, so this result is unreliable."
    ),
}


@dataclass(frozen=True)
class EstimateSpec:
    """``options.estimate`` of the spec: the regressor file and how to report its output."""

    file: str
    sha256: str | None
    name: str = "haemoglobin"
    unit: str = "g/dL"
    halfwidth: float = 0.0  # split-conformal half-width of the interval
    level: float = 0.9  # nominal coverage of the interval
    cutoff: float = 11.0  # the anaemia definition: value < cutoff is anaemic

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> EstimateSpec | None:
        raw = options.get("estimate")
        if not raw:
            return None
        return cls(
            file=str(raw["file"]),
            sha256=raw.get("sha256"),
            name=str(raw.get("name", "haemoglobin")),
            unit=str(raw.get("unit", "g/dL")),
            halfwidth=float(raw.get("interval_halfwidth", 0.0)),
            level=float(raw.get("level", 0.9)),
            cutoff=float(raw.get("cutoff", 11.0)),
        )


def agreement(anaemic: bool, value: float, low: float, high: float, cutoff: float) -> tuple[str, str]:
    """``(kind, sentence)`` comparing the class with the estimate; ``kind`` is ``agree``,
    ``borderline`` (the interval straddles the cut-off, the point estimate agrees) or ``disagree``."""
    est_anaemic = value < cutoff
    if est_anaemic != anaemic:
        said = "anaemic" if anaemic else "not anaemic"
        side = "below" if est_anaemic else "at or above"
        return "disagree", (
            f"The classifier says {said} but the haemoglobin estimate ({value:.1f} g/dL) is {side} the "
            f"{cutoff:g} g/dL cut-off: the two models disagree, so treat this result as uncertain."
        )
    if low < cutoff <= high:
        return "borderline", (
            f"Class and estimate agree, but the estimate's interval ({low:.1f}-{high:.1f} g/dL) spans "
            f"the {cutoff:g} g/dL cut-off."
        )
    return "agree", "Class and haemoglobin estimate agree."


class XGBoostConjunctivaBackend(Backend):
    """Masked colour features + XGBoost classifier, with an XGBoost haemoglobin regressor."""

    def __init__(self, spec: ModelSpec, classifier: Any, estimator: Any | None, estimate: EstimateSpec | None) -> None:
        super().__init__(spec)
        if spec.n_outputs != 1:
            raise ModelLoadFailed(f"{spec.id}: the conjunctiva backend needs a binary head")
        self.feature_set = str(spec.options.get("feature_set", "colour"))
        if self.feature_set not in FEATURE_SETS:
            raise ModelLoadFailed(f"{spec.id}: unknown feature_set {self.feature_set!r}; known: {FEATURE_SETS}")
        self.n_features = len(feature_names(self.feature_set))
        for what, booster in (("classifier", classifier), ("estimator", estimator)):
            if booster is None:
                continue
            n = int(booster.num_features())
            if n != self.n_features:
                raise ModelLoadFailed(
                    f"{spec.id}: the {what} expects {n} features, feature set {self.feature_set!r} has "
                    f"{self.n_features}"
                )
            trained_on = booster.attr(FEATURE_SET_ATTR)
            if trained_on is not None and trained_on != self.feature_set:
                raise ModelLoadFailed(
                    f"{spec.id}: the {what} was trained on feature set {trained_on!r}, the spec says "
                    f"{self.feature_set!r}"
                )
        self._sign = margin_sign(spec, classifier)
        # which class means "anaemic" for the agreement check: the spec's positive class
        self._anaemic_class = spec.positive_class or spec.class_ids[1]
        self.classifier = classifier
        self.estimator = estimator
        self.estimate = estimate

    @classmethod
    def load(cls, spec: ModelSpec, weights: Path, device: DevicePolicy) -> XGBoostConjunctivaBackend:
        estimate = EstimateSpec.from_options(spec.options)
        estimator = None
        if estimate is not None:
            path = Path(estimate.file)
            path = path if path.is_absolute() else Path(weights).parent / path
            if not path.is_file():
                raise ModelLoadFailed(f"{spec.id}: the {estimate.name} estimator {path.name} is missing")
            if estimate.sha256 and file_sha256(path) != estimate.sha256:
                raise ModelLoadFailed(f"{spec.id}: {path.name} does not match the sha256 in the registry")
            estimator = load_booster(path)
        return cls(spec, load_booster(weights), estimator, estimate)

    def warm_up(self) -> None:
        grey = np.full((32, 32, 4), 200, np.uint8)
        self.predict([grey], explain=True)

    def memory_bytes(self) -> int:
        boosters = [b for b in (self.classifier, self.estimator) if b is not None]
        return sum(len(b.save_raw("ubj")) for b in boosters)

    # -- the pipeline

    def _prepare(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[Tissue]]:
        tissues = [tissue(img) for img in images]
        if not tissues:
            return np.zeros((0, self.n_features), np.float32), []
        return np.stack([features_of_tissue(t, self.feature_set) for t in tissues]), tissues

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self._prepare(images)[0]

    def margins(self, features: np.ndarray) -> np.ndarray:
        """Log-odds of ``classes[1]`` per row."""
        import xgboost as xgb

        return self._sign * np.asarray(self.classifier.predict(xgb.DMatrix(features), output_margin=True), np.float64)

    def estimates(self, features: np.ndarray) -> np.ndarray | None:
        """The regressor's point estimates per row, or None without an estimator."""
        import xgboost as xgb

        if self.estimator is None:
            return None
        return np.asarray(self.estimator.predict(xgb.DMatrix(features)), np.float64).reshape(-1)

    def forward(self, batch: np.ndarray, explain: bool) -> tuple[np.ndarray, np.ndarray | None]:
        import xgboost as xgb

        dm = xgb.DMatrix(batch)
        margin = self._sign * np.asarray(self.classifier.predict(dm, output_margin=True), np.float64)
        raw = (1.0 / (1.0 + np.exp(-margin)))[:, None]
        # The estimate does not depend on ``explain``; it rides along as the last column of a
        # second array so that postprocess sees both (N, n_features + 1 [bias] + 1 [estimate]).
        est = self.estimates(batch)
        est_col = np.full((batch.shape[0], 1), np.nan) if est is None else est[:, None]
        if explain:
            contribs = self._sign * np.asarray(self.classifier.predict(dm, pred_contribs=True), np.float64)
        else:
            contribs = np.full((batch.shape[0], self.n_features + 1), np.nan)
        return raw, np.concatenate([contribs, est_col], axis=1)

    def postprocess(self, raw: np.ndarray, explanations: np.ndarray | None) -> list[Prediction]:
        ids = self.spec.class_ids
        preds = []
        for i, (label, probs) in enumerate(labelled(raw, self.spec)):
            extra: dict[str, Any] = {"scored_class": ids[1], "feature_set": self.feature_set}
            expl = None
            if explanations is not None:
                # NaN contributions mark a forward pass without explanation (no shared state:
                # one backend serves concurrent batches)
                if np.isfinite(explanations[i, 0]):
                    expl = explanations[i, : self.n_features].astype(np.float32)
                    extra["bias"] = float(explanations[i, self.n_features])
                    extra["margin"] = float(explanations[i, : self.n_features + 1].sum())
                value = float(explanations[i, -1])
                if self.estimate is not None and np.isfinite(value):
                    extra.update(self._estimate_extra(value, label == self._anaemic_class))
            preds.append(
                Prediction(
                    label=label,
                    probabilities=probs,
                    explanation=expl,
                    explanation_kind=None if expl is None else "feature_contributions",
                    extra=extra,
                )
            )
        return preds

    def _estimate_extra(self, value: float, anaemic: bool) -> dict[str, Any]:
        est = self.estimate
        assert est is not None
        low, high = value - est.halfwidth, value + est.halfwidth
        kind, sentence = agreement(anaemic, value, low, high, est.cutoff)
        return {
            "estimate": {
                "name": est.name,
                "value": round(value, 2),
                "unit": est.unit,
                "interval": [round(low, 2), round(high, 2)],
                "level": est.level,
            },
            "agreement": kind,
            "agreement_note": sentence,
        }

    def _finish(self, preds: list[Prediction], context: list[Tissue]) -> list[Prediction]:
        for pred, t in zip(preds, context, strict=True):
            pred.extra["mask_source"] = t.source
            note = SOURCE_NOTES.get(t.source, "")
            if note:
                pred.extra["input_note"] = note
        return preds

    def close(self) -> None:
        self.classifier = None
        self.estimator = None
