"""Palm anaemia screening: an OpenCV HSV colour histogram fed to an XGBoost classifier.

Features (exactly the original's, see ``shared/reference/models.md``): the 512-bin HSV
histogram of :mod:`inference.backends.hsv_histogram`.

Weights load from XGBoost's own JSON or UBJSON formats only. A pickle can run arbitrary code
when it is read, so the only way to use an old pickled model is the explicit, offline
conversion::

    python -m inference.backends.xgboost_palm convert --trust-pickle IN.pkl OUT.ubj --margin-class AnemicP

The booster records which class a positive margin stands for (attribute
``doctorai_margin_class``), so the label order never depends on a directory listing again.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inference.backends.base import Backend, DevicePolicy, Prediction
from inference.backends.hsv_histogram import (
    N_FEATURES,
    palm_features,
)
from inference.errors import ModelLoadFailed
from inference.heads import labelled
from inference.registry import ModelSpec

log = logging.getLogger(__name__)

MARGIN_CLASS_ATTR = "doctorai_margin_class"
NATIVE_SUFFIXES = (".json", ".ubj")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".dat", ".sav")


def load_booster(path: Path) -> Any:
    """Load an XGBoost Booster from a native ``.json``/``.ubj`` file; refuse anything else."""
    import xgboost as xgb

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ModelLoadFailed(
            f"{path.name} is a pickle, which can run code when loaded; convert it once with "
            f"`python -m inference.backends.xgboost_palm convert --trust-pickle {path.name} palm.ubj` "
            "if you trust its origin"
        )
    if suffix not in NATIVE_SUFFIXES:
        raise ModelLoadFailed(f"{path.name}: the palm model must be an XGBoost .json or .ubj file")
    booster = xgb.Booster()
    try:
        booster.load_model(str(path))
    except xgb.core.XGBoostError as exc:
        raise ModelLoadFailed(f"could not load {path.name}: {exc}") from exc
    return booster


def margin_sign(spec: ModelSpec, booster: Any) -> float:
    """+1 when the booster's positive margin scores ``classes[1]`` (the head's raw output is
    P(classes[1])), -1 when it scores ``classes[0]``; read from the booster's recorded
    margin class, so the label order never depends on a directory listing. Shared by every
    backend of the XGBoost family."""
    positive = spec.class_ids[1]
    margin_class = booster.attr(MARGIN_CLASS_ATTR)
    if margin_class is None:
        log.warning("%s: booster has no %s attribute; assuming it scores %s", spec.id, MARGIN_CLASS_ATTR, positive)
        margin_class = positive
    if margin_class not in spec.class_ids:
        raise ModelLoadFailed(f"{spec.id}: the booster scores {margin_class!r}, which is not a class of the spec")
    return 1.0 if margin_class == positive else -1.0


class XGBoostPalmBackend(Backend):
    """HSV histogram + XGBoost; the explanation is each feature's contribution to the margin."""

    def __init__(self, spec: ModelSpec, booster: Any) -> None:
        super().__init__(spec)
        if spec.n_outputs != 1:
            raise ModelLoadFailed(f"{spec.id}: the palm backend needs a binary head")
        n = int(booster.num_features())
        if n != N_FEATURES:
            raise ModelLoadFailed(f"{spec.id}: the booster expects {n} features, the palm features are {N_FEATURES}")
        self._sign = margin_sign(spec, booster)
        self.booster = booster

    @classmethod
    def load(cls, spec: ModelSpec, weights: Path, device: DevicePolicy) -> XGBoostPalmBackend:
        return cls(spec, load_booster(weights))

    def warm_up(self) -> None:
        self.forward(np.zeros((1, N_FEATURES), np.float32), explain=True)

    def memory_bytes(self) -> int:
        return len(self.booster.save_raw("ubj"))

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([palm_features(img) for img in images]) if images else np.zeros((0, N_FEATURES), np.float32)

    def margins(self, features: np.ndarray) -> np.ndarray:
        """Log-odds of ``classes[1]`` per row."""
        import xgboost as xgb

        return self._sign * np.asarray(self.booster.predict(xgb.DMatrix(features), output_margin=True), np.float64)

    def forward(self, batch: np.ndarray, explain: bool) -> tuple[np.ndarray, np.ndarray | None]:
        import xgboost as xgb

        dm = xgb.DMatrix(batch)
        margin = self._sign * np.asarray(self.booster.predict(dm, output_margin=True), np.float64)
        raw = (1.0 / (1.0 + np.exp(-margin)))[:, None]
        if not explain:
            return raw, None
        # (N, 513): one contribution per feature, then the bias; they sum to the margin.
        contribs = self._sign * np.asarray(self.booster.predict(dm, pred_contribs=True), np.float64)
        return raw, contribs

    def postprocess(self, raw: np.ndarray, explanations: np.ndarray | None) -> list[Prediction]:
        ids = self.spec.class_ids
        preds = []
        for i, (label, probs) in enumerate(labelled(raw, self.spec)):
            extra: dict[str, Any] = {"scored_class": ids[1]}
            expl = None
            if explanations is not None:
                expl = explanations[i, :N_FEATURES].astype(np.float32)
                extra["bias"] = float(explanations[i, N_FEATURES])
                extra["margin"] = float(explanations[i].sum())
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

    def close(self) -> None:
        self.booster = None


# ----------------------------------------------------------------------------- conversion


def convert_pickle(src: Path, dst: Path, margin_class: str) -> None:
    """Convert a *trusted* pickled XGBoost model (Booster or XGBClassifier) to JSON/UBJ."""
    import pickle

    if Path(dst).suffix.lower() not in NATIVE_SUFFIXES:
        raise ValueError(f"{dst}: the output must end in .ubj or .json")
    with Path(src).open("rb") as fh:
        try:
            import joblib

            obj = joblib.load(fh)
        except ImportError:
            obj = pickle.load(fh)  # noqa: S301  (only reached with --trust-pickle, offline)
    booster = obj.get_booster() if hasattr(obj, "get_booster") else obj
    if not hasattr(booster, "save_model") or not hasattr(booster, "set_attr"):
        raise ValueError(f"{src}: not an XGBoost model ({type(obj).__name__})")
    booster.set_attr(**{MARGIN_CLASS_ATTR: margin_class})
    booster.save_model(str(dst))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m inference.backends.xgboost_palm convert --trust-pickle IN.pkl OUT.ubj``."""
    parser = argparse.ArgumentParser(prog="python -m inference.backends.xgboost_palm")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="convert a trusted pickled model to XGBoost's UBJ/JSON format")
    conv.add_argument("src", type=Path)
    conv.add_argument("dst", type=Path)
    conv.add_argument(
        "--trust-pickle",
        action="store_true",
        help="required: loading a pickle runs whatever code it contains; only for files you trust",
    )
    conv.add_argument(
        "--margin-class",
        default="AnemicP",
        help="the class a positive margin of this model stands for (label 1 when it was trained)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not args.trust_pickle:
        log.error(
            "refusing to load %s: a pickle can execute arbitrary code; pass --trust-pickle if you trust it",
            args.src,
        )
        return 2
    convert_pickle(args.src, args.dst, args.margin_class)
    log.info("wrote %s (positive margin = %s)", args.dst, args.margin_class)
    return 0


if __name__ == "__main__":
    sys.exit(main())
