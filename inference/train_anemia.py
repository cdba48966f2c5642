"""Train the conjunctiva anaemia model: ``python -m inference.train conjunctiva_anemia --data DIR``.

``DIR`` is the CP-AnemiC layout (``../shared/datasets/conjunctiva_anemia``): ``labels.csv``
(``image_id, split, class, hb_g_dl, age_months, sex, hospital``) and the RGBA crops under
``DIR/<split>/<class>/<image_id>.png``. Haemoglobin and hospital are needed: the first is the
estimator's target, the second the cross-validation's groups.

What one run does, in order:

1. decode every image with :func:`inference.imaging.decode_image` and the spec's alpha handling,
   exactly as the app does, and compute every candidate feature set once;
2. **selection**: hospital-grouped 5-fold CV on train+val (a fold's hospitals are never in its
   training folds, so it measures a new site) for each candidate feature set
   (``options.candidate_feature_sets``); the set with the highest ROC AUC wins (ties: fewer
   features). The CV report gives accuracy, balanced accuracy, ROC AUC, sensitivity and
   specificity at the threshold, ECE with cross-fitted Platt calibration (each fold's calibration
   fitted on the other folds' out-of-fold outputs), haemoglobin MAE against the mean predictor
   (the training folds' mean) and the coverage of the prediction interval, also cross-fitted;
3. **the shipped model** is fitted on ``train/`` only, so that ``val/`` stays a true hold-out for
   ``python -m inference.evaluate``. Its Platt calibration and the split-conformal half-width of
   the haemoglobin interval come from hospital-grouped CV on ``train/`` (out-of-fold outputs),
   never from val;
4. val is scored with the alpha channel and with it stripped (the crop over black, so the
   non-background region is found; and over grey, where nothing separates and the whole frame is
   used) to say what an upload without a mask does to accuracy;
5. ``--install`` copies both UBJ files to the model directory and writes the spec: weights and
   sha256 of both, feature set, calibration, estimate interval, card.

The operating threshold is 0.5 on the calibrated probability of ``Anemic``; it is not tuned.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.registry import Calibration, ModelSpec, Registry, file_sha256

log = logging.getLogger("inference.train_anemia")

N_FOLDS = 5
ANAEMIA_CUTOFF = 11.0  # g/dL; the dataset's (and WHO's, for 6-59 months) definition
DEFAULT_PARAMS: dict[str, Any] = {
    # chosen by the same hospital-grouped CV (deeper, longer ensembles scored higher AUC here:
    # depth 1-3 with 150-600 rounds 0.70-0.91, depth 4-6 with 600-1200 rounds 0.92)
    "n_estimators": 1000,
    "max_depth": 4,
    "learning_rate": 0.05,
    "subsample": 0.8,
    "colsample_bytree": 0.7,
    "min_child_weight": 1.0,
}


@dataclass
class Samples:
    """The labelled children: one row per image."""

    paths: list[Path]
    anaemic: np.ndarray  # 1 = Anemic
    hb: np.ndarray  # g/dL
    hospital: np.ndarray  # str
    split: np.ndarray  # "train" / "val"

    def subset(self, mask: np.ndarray) -> Samples:
        idx = np.flatnonzero(mask)
        return Samples(
            [self.paths[i] for i in idx], self.anaemic[idx], self.hb[idx], self.hospital[idx], self.split[idx]
        )

    def __len__(self) -> int:
        return len(self.paths)


def load_samples(root: Path, positive: str = "Anemic") -> Samples:
    """Read ``root/labels.csv`` and find each image; refuse a layout without the needed columns."""
    root = Path(root)
    labels = root / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(
            f"{labels} not found: the conjunctiva trainer needs labels.csv with image_id, split, class, "
            "hb_g_dl and hospital (the CP-AnemiC layout)"
        )
    paths: list[Path] = []
    anaemic: list[int] = []
    hb: list[float] = []
    hospital: list[str] = []
    split: list[str] = []
    with labels.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            folder = root / row["split"] / row["class"]
            matches = sorted(folder.glob(f"{row['image_id']}.*"))
            if not matches:
                raise FileNotFoundError(f"no image for {row['image_id']} under {folder}")
            paths.append(matches[0])
            anaemic.append(int(row["class"] == positive))
            hb.append(float(row["hb_g_dl"]))
            hospital.append(row["hospital"])
            split.append(row["split"])
    return Samples(paths, np.array(anaemic), np.array(hb), np.array(hospital), np.array(split))


# ----------------------------------------------------------------------------- features

Strip = str  # "none" (alpha kept), "black" (composited over black), "grey" (over mid-grey)


def decode_for_model(path: Path, strip: Strip = "none") -> np.ndarray:
    """The pixels the app hands the model for this file; ``strip`` removes the alpha channel."""
    from inference.imaging import decode_image

    image = decode_image(path.read_bytes(), filename=path.name)
    if strip == "none":
        return image.model_pixels(keep_alpha=True)
    if strip == "black":
        return image.pixels  # the decoder composites over black: a plain RGB save of the crop
    if strip == "grey":
        alpha = (image.alpha if image.alpha is not None else np.full(image.pixels.shape[:2], 255, np.uint8))[..., None]
        over = image.pixels.astype(np.float32) + (255.0 - alpha) / 255.0 * 128.0
        return np.clip(np.rint(over), 0, 255).astype(np.uint8)
    raise ValueError(f"unknown strip mode {strip!r}")


def extract(
    samples: Samples, feature_sets: list[str], strip: Strip = "none"
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Feature matrices per set (tissue masked once per image) and each image's mask source."""
    from inference.backends.conjunctiva_features import features_of_tissue, tissue

    rows: dict[str, list[np.ndarray]] = {fs: [] for fs in feature_sets}
    sources: list[str] = []
    for path in samples.paths:
        t = tissue(decode_for_model(path, strip))
        sources.append(t.source)
        for fs in feature_sets:
            rows[fs].append(features_of_tissue(t, fs))
    return {fs: np.stack(r) for fs, r in rows.items()}, sources


# ----------------------------------------------------------------------------- models


def _xgb_params(params: dict[str, Any], seed: int) -> dict[str, Any]:
    return {**params, "random_state": seed, "n_jobs": 2, "tree_method": "hist"}


def fit_classifier(x: np.ndarray, y: np.ndarray, params: dict[str, Any], seed: int) -> Any:
    import xgboost as xgb

    return xgb.XGBClassifier(**_xgb_params(params, seed), eval_metric="logloss").fit(x, y, verbose=False)


def fit_regressor(x: np.ndarray, hb: np.ndarray, params: dict[str, Any], seed: int) -> Any:
    import xgboost as xgb

    return xgb.XGBRegressor(**_xgb_params(params, seed), objective="reg:squarederror").fit(x, hb, verbose=False)


def hospital_folds(groups: np.ndarray, n_folds: int = N_FOLDS) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train_idx, test_idx)`` per fold; no hospital is in both (sklearn's GroupKFold)."""
    from sklearn.model_selection import GroupKFold

    n = min(n_folds, len(set(groups.tolist())))
    if n < 2:
        raise ValueError("hospital-grouped CV needs at least two hospitals")
    dummy = np.zeros(len(groups))
    return [(tr, te) for tr, te in GroupKFold(n_splits=n).split(dummy, dummy, groups)]


@dataclass
class OutOfFold:
    """Out-of-fold outputs of a grouped CV: raw P(anaemic), haemoglobin, the mean baseline."""

    p_raw: np.ndarray
    hb_pred: np.ndarray
    hb_base: np.ndarray
    fold: np.ndarray


def grouped_oof(x: np.ndarray, s: Samples, params: dict[str, Any], seed: int) -> OutOfFold:
    """Fit classifier and regressor per hospital-grouped fold; collect the held-out outputs."""
    n = len(s)
    p_raw, hb_pred, hb_base, fold = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n, np.int64)
    for k, (tr, te) in enumerate(hospital_folds(s.hospital)):
        p_raw[te] = fit_classifier(x[tr], s.anaemic[tr], params, seed).predict_proba(x[te])[:, 1]
        hb_pred[te] = fit_regressor(x[tr], s.hb[tr], params, seed).predict(x[te])
        hb_base[te] = s.hb[tr].mean()
        fold[te] = k
    return OutOfFold(p_raw, hb_pred, hb_base, fold)


def conformal_halfwidth(residuals: np.ndarray, level: float) -> float:
    """Split-conformal half-width: the ceil((n+1)·level)-th smallest absolute residual."""
    r = np.sort(np.abs(np.asarray(residuals, np.float64)))
    k = min(len(r), int(np.ceil((len(r) + 1) * level)))
    return float(r[k - 1])


def cv_report(oof: OutOfFold, s: Samples, spec: ModelSpec, level: float) -> dict[str, Any]:
    """Metrics of out-of-fold outputs, with calibration and interval cross-fitted per fold."""
    from inference.heads import apply_head
    from inference.metrics import classification_metrics, fit_calibration

    probs = np.zeros((len(s), 2))
    covered = np.zeros(len(s), bool)
    for k in np.unique(oof.fold):
        held, rest = oof.fold == k, oof.fold != k
        cal = fit_calibration(spec.head, s.anaemic[rest], oof.p_raw[rest][:, None])
        probs[held] = apply_head(oof.p_raw[held][:, None], spec.head, cal)
        half = conformal_halfwidth(s.hb[rest] - oof.hb_pred[rest], level)
        covered[held] = np.abs(s.hb[held] - oof.hb_pred[held]) <= half
    m = classification_metrics(s.anaemic, probs, spec)
    mae = float(np.mean(np.abs(s.hb - oof.hb_pred)))
    base = float(np.mean(np.abs(s.hb - oof.hb_base)))
    anaemic_pred = probs[:, 1] >= spec.threshold
    return {
        "n": len(s),
        "hospitals": len(set(s.hospital.tolist())),
        "folds": len(np.unique(oof.fold)),
        "accuracy": m["accuracy"],
        "balanced_accuracy": m["balanced_accuracy"],
        "roc_auc": m["roc_auc"][spec.class_ids[1]],
        "sensitivity": m["sensitivity"],
        "specificity": m["specificity"],
        "threshold": spec.threshold,
        "ece": m["ece"],
        "hb_mae": mae,
        "hb_mae_mean_predictor": base,
        "hb_mae_reduction": 1.0 - mae / base if base else 0.0,
        "hb_interval_coverage": float(covered.mean()),
        "hb_interval_level": level,
        "class_estimate_agreement": float(np.mean(anaemic_pred == (oof.hb_pred < ANAEMIA_CUTOFF))),
    }


# ----------------------------------------------------------------------------- training


def _val_metrics(backend: Any, paths: list[Path], y: np.ndarray, spec: ModelSpec, strip: Strip) -> dict[str, Any]:
    """The shipped backend on val files, through its own predict path (as the app runs it)."""
    from inference.metrics import classification_metrics

    preds = backend.predict([decode_for_model(p, strip) for p in paths], explain=False).predictions
    probs = np.array([[pr.probabilities[c] for c in spec.class_ids] for pr in preds])
    m = classification_metrics(y, probs, spec)
    hb = np.array([pr.extra["estimate"]["value"] for pr in preds])
    sources = sorted({str(pr.extra.get("mask_source")) for pr in preds})
    return {
        "accuracy": m["accuracy"],
        "balanced_accuracy": m["balanced_accuracy"],
        "roc_auc": m["roc_auc"][spec.class_ids[1]],
        "sensitivity": m["sensitivity"],
        "specificity": m["specificity"],
        "ece": m["ece"],
        "hb_predictions": hb,
        "mask_sources": sources,
    }


def train_conjunctiva(spec: ModelSpec, cfg: Any) -> dict[str, Any]:
    """Select the feature set by grouped CV, fit the shipped model on train, score val, install.

    ``cfg`` is :class:`inference.train.TrainConfig` (``data``, ``out``, ``seed``, ``install``,
    ``registry``, ``model_dir``, ``version``).
    """
    from inference.backends.conjunctiva_features import FEATURE_SETS, feature_names
    from inference.backends.xgboost_conjunctiva import (
        FEATURE_SET_ATTR,
        TARGET_ATTR,
        EstimateSpec,
        XGBoostConjunctivaBackend,
    )
    from inference.backends.xgboost_palm import MARGIN_CLASS_ATTR
    from inference.heads import apply_head
    from inference.metrics import fit_calibration

    t_start = time.perf_counter()
    positive = spec.class_ids[1]
    if spec.positive_class not in (None, positive):
        raise ValueError(f"{spec.id}: the positive class must be classes[1] ({positive})")
    samples = load_samples(cfg.data, positive)
    candidates = [str(c) for c in spec.options.get("candidate_feature_sets", FEATURE_SETS)]
    params = {**DEFAULT_PARAMS, **spec.options.get("xgboost", {})}
    level = float(spec.options.get("estimate", {}).get("level", 0.9))
    log.info(
        "%s: %d children from %d hospitals; candidates %s",
        spec.id,
        len(samples),
        len(set(samples.hospital)),
        candidates,
    )
    feats, sources = extract(samples, candidates)
    if set(sources) != {"alpha"}:
        log.warning("%s: some training images have no alpha: %s", spec.id, sorted(set(sources)))
    spec_t = spec.model_copy(update={"calibration": Calibration(), "threshold": 0.5})

    # 2. selection on train+val
    selection: dict[str, dict[str, Any]] = {}
    for fs in candidates:
        selection[fs] = cv_report(grouped_oof(feats[fs], samples, params, cfg.seed), samples, spec_t, level)
        log.info(
            "CV %s: %s", fs, json.dumps({k: round(v, 4) for k, v in selection[fs].items() if isinstance(v, float)})
        )
    chosen = max(candidates, key=lambda fs: (round(selection[fs]["roc_auc"], 3), -feats[fs].shape[1]))
    log.info("chosen feature set: %s", chosen)

    # 3. the shipped model: train/ only; calibration and interval from grouped CV on train/
    is_train = samples.split == "train"
    tr = samples.subset(is_train)
    x_tr = feats[chosen][is_train]
    oof_tr = grouped_oof(x_tr, tr, params, cfg.seed)
    cal = fit_calibration(
        spec.head, tr.anaemic, oof_tr.p_raw[:, None], fitted_on=f"hospital-grouped CV on train ({len(tr)} images)"
    )
    halfwidth = conformal_halfwidth(tr.hb - oof_tr.hb_pred, level)
    clf = fit_classifier(x_tr, tr.anaemic, params, cfg.seed).get_booster()
    reg = fit_regressor(x_tr, tr.hb, params, cfg.seed).get_booster()
    clf.set_attr(**{MARGIN_CLASS_ATTR: positive, FEATURE_SET_ATTR: chosen})
    reg.set_attr(**{TARGET_ATTR: "hb_g_dl", FEATURE_SET_ATTR: chosen})
    cfg.out.mkdir(parents=True, exist_ok=True)
    clf_path, reg_path = cfg.out / f"{spec.id}.ubj", cfg.out / f"{spec.id}_hb.ubj"
    clf.save_model(str(clf_path))
    reg.save_model(str(reg_path))

    estimate_opts = {
        "name": "haemoglobin",
        "unit": "g/dL",
        "file": reg_path.name,
        "sha256": file_sha256(reg_path),
        "interval_halfwidth": round(halfwidth, 3),
        "level": level,
        "cutoff": ANAEMIA_CUTOFF,
    }
    options = {**spec.options, "feature_set": chosen, "estimate": estimate_opts}
    shipped = spec.model_copy(update={"calibration": cal, "threshold": 0.5, "options": options})
    backend = XGBoostConjunctivaBackend(shipped, clf, reg, EstimateSpec.from_options(options))

    # 4. val, with and without the mask
    va = samples.subset(~is_train)
    val: dict[str, dict[str, Any]] = {}
    for strip in ("none", "black", "grey"):
        v = _val_metrics(backend, va.paths, va.anaemic, shipped, strip)
        hb_pred = v.pop("hb_predictions")
        v["hb_mae"] = float(np.mean(np.abs(va.hb - hb_pred)))
        v["hb_mae_mean_predictor"] = float(np.mean(np.abs(va.hb - tr.hb.mean())))
        v["hb_interval_coverage"] = float(np.mean(np.abs(va.hb - hb_pred) <= halfwidth))
        val[strip] = v
        log.info(
            "val (alpha %s): %s", strip, json.dumps({k: round(x, 4) for k, x in v.items() if isinstance(x, float)})
        )
    oof_train_probs = apply_head(oof_tr.p_raw[:, None], spec.head, cal)

    summary: dict[str, Any] = {
        "selection": selection,
        "chosen_feature_set": chosen,
        "n_features": len(feature_names(chosen)),
        "params": params,
        "calibration": cal.model_dump(),
        "hb_interval_halfwidth": halfwidth,
        "train_oof_mean_p": float(oof_train_probs[:, 1].mean()),
        "val": val,
        "n_train": len(tr),
        "n_val": len(va),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    (cfg.out / "train_log.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    log.info("%s: saved %s and %s in %.0f s", spec.id, clf_path, reg_path, summary["seconds"])
    if cfg.install:
        install(spec, cfg, clf_path, reg_path, summary, estimate_opts)
    return summary


# ----------------------------------------------------------------------------- install + card


def _fmt_cv(c: dict[str, Any]) -> str:
    return (
        f"accuracy {c['accuracy']:.3f}, balanced accuracy {c['balanced_accuracy']:.3f}, ROC AUC {c['roc_auc']:.3f}, "
        f"sensitivity {c['sensitivity']:.3f} / specificity {c['specificity']:.3f} at threshold {c['threshold']:.2f}, "
        f"ECE {c['ece']:.3f}; haemoglobin MAE {c['hb_mae']:.2f} g/dL vs {c['hb_mae_mean_predictor']:.2f} for the "
        f"mean predictor ({c['hb_mae_reduction']:.0%} lower), {c['hb_interval_level']:.0%} interval coverage "
        f"{c['hb_interval_coverage']:.2f}"
    )


def card_fields(summary: dict[str, Any], spec_id: str) -> dict[str, str]:
    """The card's measured sections, from one training summary (only what was measured)."""
    sel, chosen = summary["selection"], summary["chosen_feature_set"]
    v, vb, vg = summary["val"]["none"], summary["val"]["black"], summary["val"]["grey"]
    n_val = summary["n_val"]
    others = "; ".join(
        f"{fs}: AUC {c['roc_auc']:.3f}, accuracy {c['accuracy']:.3f}" for fs, c in sel.items() if fs != chosen
    )
    return {
        "cv": (
            f"Hospital-grouped {sel[chosen]['folds']}-fold CV on train+val ({sel[chosen]['n']} children, "
            f"{sel[chosen]['hospitals']} hospitals; a fold's hospitals are never in its training folds; calibration "
            f"and interval cross-fitted), feature set `{chosen}` (chosen by ROC AUC): {_fmt_cv(sel[chosen])}. "
            f"Class and estimate agreed on {sel[chosen]['class_estimate_agreement']:.0%} of children. Other feature "
            f"sets: {others}."
        ),
        "metrics": (
            f"On conjunctiva_anemia/val ({n_val} children from the training hospitals, not used for training, "
            f"calibration or the interval; `python -m inference.evaluate`): accuracy {v['accuracy']:.3f}, "
            f"balanced accuracy {v['balanced_accuracy']:.3f}, ROC AUC {v['roc_auc']:.3f}, sensitivity (Anemic) "
            f"{v['sensitivity']:.3f}, specificity {v['specificity']:.3f} at threshold 0.50, ECE {v['ece']:.3f}; "
            f"haemoglobin MAE {v['hb_mae']:.2f} g/dL vs {v['hb_mae_mean_predictor']:.2f} for the train mean, interval "
            f"coverage {v['hb_interval_coverage']:.2f}. Val is small and from the same sites, so the CV figures are "
            "the better estimate for a new hospital. The held-out hospitals were not used."
        ),
        "shift": (
            f"Without the alpha mask (val, same model): crop saved over black, so the non-background region is "
            f"found: accuracy {vb['accuracy']:.3f}, ROC AUC {vb['roc_auc']:.3f}, haemoglobin MAE {vb['hb_mae']:.2f}; "
            f"crop over grey, where no background separates and the whole frame is used: accuracy "
            f"{vg['accuracy']:.3f}, ROC AUC {vg['roc_auc']:.3f}, MAE {vg['hb_mae']:.2f} (with the mask: "
            f"{v['accuracy']:.3f} / {v['roc_auc']:.3f} / {v['hb_mae']:.2f}). A plain eye photograph, with skin and "
            "sclera in the frame, is further out of distribution and was not measured."
        ),
        "calibration": (
            f"Platt a = {summary['calibration']['platt_a']:.3f}, b = {summary['calibration']['platt_b']:.3f}, fitted "
            f"on hospital-grouped out-of-fold outputs on train ({summary['n_train']} images). Haemoglobin interval: "
            f"estimate ± {summary['hb_interval_halfwidth']:.2f} g/dL (split-conformal, "
            f"{sel[chosen]['hb_interval_level']:.0%} nominal, from the same out-of-fold residuals)."
        ),
        "training": (
            f"{summary['n_train']} train images (val held out); XGBoost {summary['params']['n_estimators']} trees of "
            f"depth {summary['params']['max_depth']}, learning rate {summary['params']['learning_rate']}, for the "
            f"classifier and the regressor; {summary['seconds']:.0f} s on 2 CPU cores including the CV; "
            f"`python -m inference.train {spec_id} --data <datasets>/conjunctiva_anemia --install`."
        ),
    }


def install(
    spec: ModelSpec,
    cfg: Any,
    clf_path: Path,
    reg_path: Path,
    summary: dict[str, Any],
    estimate_opts: dict[str, Any],
) -> ModelSpec:
    """Copy both boosters to ``cfg.model_dir`` and write the spec (weights, options, card)."""
    from inference.registry import bump_version
    from inference.specs_io import update_model_entry

    current = Registry.from_yaml(cfg.registry)[spec.id]
    dest = cfg.model_dir / (current.weights.file if current.weights else clf_path.name)
    dest_hb = cfg.model_dir / reg_path.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(clf_path, dest)
    shutil.copyfile(reg_path, dest_hb)
    cal = summary["calibration"]
    updates: dict[str, Any] = {
        "weights": {"file": dest.name, "sha256": file_sha256(dest)},
        "version": cfg.version or bump_version(current.version),
        "threshold": 0.5,
        "calibration": {k: v for k, v in cal.items() if v is not None},
        "options": {
            "feature_set": summary["chosen_feature_set"],
            "estimate": {**estimate_opts, "file": dest_hb.name, "sha256": file_sha256(dest_hb)},
        },
        "card": card_fields(summary, spec.id),
    }
    new = update_model_entry(cfg.registry, spec.id, updates)
    log.info("installed %s and %s as %s v%s", dest.name, dest_hb.name, spec.id, new.version)
    return new
