"""Pretrained-feature probe: ``python -m inference.train probe <model_id> --data DIR [--install]``.

For data too scarce to fine-tune a network on two CPU cores with patient-grouped model
selection (monkeypox: 228 original photos of ~120 patients), the ImageNet-pretrained
EfficientNet-Lite0 (:mod:`inference.backbones`) stays frozen and a class-balanced,
L2-regularised logistic regression is fitted on its globally pooled features. The recipe
(where the backbone is cut and the regularisation ``C``) is chosen by repeated
patient-grouped cross-validation over train + val pooled, scored on original photos only,
exactly as :func:`inference.train.cross_validate` scores the fine-tuned recipes; the
probability calibration is fitted on the chosen recipe's out-of-fold outputs (and its ECE
is reported cross-fitted: each fold calibrated on the other folds).

The served model is one ordinary ``efficientnet_lite0`` Keras file: the (cut) backbone,
global average pooling and a dense layer into which the standardiser and the logistic
regression are folded, so prediction and Grad-CAM are one fused pass with no scikit-learn
at serving time. Training images enter as themselves and left-right mirrored (the
dataset's own augmented copies are kept); val and CV test images as themselves only,
because that is what the app sees.

Everything the card says comes from the run's log (``<out>/probe_log.json``): the grid,
the per-recipe CV, the chosen recipe, the wall time.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from inference.registry import Calibration, Head, ModelSpec, Registry, file_sha256

log = logging.getLogger("inference.probe")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LITE_SCALE, LITE_OFFSET = 1.0 / 128.0, -127.0 / 128.0  # (pixels - 127) / 128

# where the backbone is cut -> (layer whose pooled output is the feature, builder options)
CUTS: dict[str, tuple[str, dict[str, Any]]] = {
    "block14": ("block14_add", {"lite_stages": 6, "lite_head": False}),  # 7x7x192, before the last block
    "head": ("head_relu", {"lite_stages": 7, "lite_head": True}),  # 7x7x1280, the ImageNet feature
}
DEFAULT_C = (0.001, 0.003, 0.01, 0.03)
DEFAULT_SEEDS = (1337, 1, 2)


@dataclass(frozen=True)
class Recipe:
    """Where the backbone is cut, the regularisation, and whether the dataset's own
    augmented copies join the originals (and their mirror images) in training."""

    cut: str
    c: float
    copies: bool = True

    @property
    def name(self) -> str:
        return f"{self.cut}/C={self.c:g}/{'with' if self.copies else 'without'} copies"


# ----------------------------------------------------------------------------- features


def probe_spec(spec: ModelSpec, cut: str, backbone: Path | None, size: int) -> ModelSpec:
    """``spec`` as the served probe model: Lite0 input scaling, the cut, the backbone file."""
    opts = {**spec.options, "architecture": "efficientnet_lite0", "drop_connect": 0.0, **CUTS[cut][1]}
    opts.pop("backbone_weights", None)
    if backbone is not None:
        opts["backbone_weights"] = str(backbone)
    inp = spec.input.model_copy(update={"size": size, "scale": LITE_SCALE, "offset": LITE_OFFSET})
    return spec.model_copy(update={"options": opts, "input": inp, "gradcam_layer": "gradcam_features"})


def extract_features(
    spec: ModelSpec, backbone: Path, images: np.ndarray, batch_size: int = 32
) -> dict[str, np.ndarray]:
    """Pooled features of every cut for ``images`` (uint8 ``(N, s, s, 3)``), in one pass."""
    import keras

    from inference.architectures import build_model

    full = build_model(probe_spec(spec, "head", backbone, images.shape[1]))
    names = list(CUTS)
    pooled = [keras.layers.GlobalAveragePooling2D()(full.get_layer(CUTS[n][0]).output) for n in names]
    extractor = keras.Model(full.input, pooled)
    out: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].astype(np.float32) * LITE_SCALE + LITE_OFFSET
        for i, f in enumerate(extractor(x, training=False)):
            out[i].append(np.asarray(f, np.float32))
    return {n: np.concatenate(out[i]) for i, n in enumerate(names)}


# ----------------------------------------------------------------------------- the probe


def fit_probe(x: np.ndarray, y: np.ndarray, c: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Standardise + class-balanced logistic regression, folded into ``(W, b)`` on raw features.

    Binary: ``W`` is ``(d,)`` and ``x @ W + b`` is the log-odds of class 1; multiclass: ``(d, K)``
    logits.
    """
    from sklearn.linear_model import LogisticRegression

    mu = x.mean(0)
    sd = x.std(0) + 1e-6
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed)
    clf.fit((x - mu) / sd, y)
    coef = clf.coef_ / sd  # (1, d) or (K, d)
    bias = clf.intercept_ - coef @ mu
    if coef.shape[0] == 1:
        return coef[0].astype(np.float64), bias.astype(np.float64)
    return coef.T.astype(np.float64), bias.astype(np.float64)


def dense_weights(head: Head, w: np.ndarray, b: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The output Dense layer's ``(kernel, bias)`` that computes the probe under ``head``."""
    if w.ndim == 1:  # binary log-odds z of class 1
        if head is Head.SIGMOID_MULTI:  # two independent sigmoids: [sigmoid(-z), sigmoid(z)]
            return np.stack([-w, w], 1), np.array([-b[0], b[0]])
        if head is Head.SIGMOID_SINGLE:
            return w[:, None], b[:1]
        if head is Head.SOFTMAX:  # softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]
            return np.stack([np.zeros_like(w), w], 1), np.array([0.0, b[0]])
    elif head is Head.SOFTMAX and w.shape[1] == n_classes:
        return w, b
    raise ValueError(f"a probe cannot drive a {head.value} head with {n_classes} classes")


def raw_from_dense(head: Head, x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """What the served model outputs for pooled features ``x`` (before calibration)."""
    z = x.astype(np.float64) @ kernel + bias
    if head is Head.SOFTMAX:
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return np.asarray(e / e.sum(1, keepdims=True))
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def _train_rows(
    feats: np.ndarray, flipped: np.ndarray, idx: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([feats[idx], flipped[idx]]), np.concatenate([y[idx], y[idx]])


def _fold_scores(spec: ModelSpec, y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    from inference.metrics import classification_metrics

    m = classification_metrics(y, probs, spec)
    out = {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "ece": m["ece"]}
    for cid in spec.class_ids:
        out[f"recall_{cid}"] = m["per_class"][cid]["recall"]
    return out


def _summarise(folds: list[dict[str, float]]) -> dict[str, float]:
    keys = folds[0].keys()
    out: dict[str, float] = {}
    for k in keys:
        v = np.array([f[k] for f in folds], np.float64)
        out[f"mean_{k}"] = float(v.mean())
        out[f"std_{k}"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return out


def cross_validate_probe(
    spec: ModelSpec,
    feats: dict[str, np.ndarray],
    flipped: dict[str, np.ndarray],
    y: np.ndarray,
    groups: np.ndarray,
    original: np.ndarray,
    recipes: Sequence[Recipe],
    seeds: Sequence[int],
    folds: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Patient-grouped CV of every recipe, repeated over ``seeds``; each test fold scored on
    its original photos only, uncalibrated. Returns the per-recipe summaries and the
    out-of-fold raw outputs of the first seed (for calibration)."""
    from sklearn.model_selection import StratifiedGroupKFold

    from inference.heads import apply_head

    results: dict[str, Any] = {}
    oof: dict[str, np.ndarray] = {}
    k = len(spec.classes)
    for recipe in recipes:
        per_fold: list[dict[str, float]] = []
        first_oof = np.full((len(y), k if spec.head is not Head.SIGMOID_SINGLE else 1), np.nan)
        for s_i, seed in enumerate(seeds):
            splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
            for tr, te in splitter.split(np.zeros(len(y)), y, groups):
                te = te[original[te]]
                if not recipe.copies:
                    tr = tr[original[tr]]
                x_tr, y_tr = _train_rows(feats[recipe.cut], flipped[recipe.cut], tr, y)
                w, b = fit_probe(x_tr, y_tr, recipe.c)
                kernel, bias = dense_weights(spec.head, w, b, k)
                raw = raw_from_dense(spec.head, feats[recipe.cut][te], kernel, bias)
                if s_i == 0:
                    first_oof[te] = raw
                per_fold.append(_fold_scores(spec, y[te], apply_head(raw, spec.head)))
        n = folds
        results[recipe.name] = {
            "cut": recipe.cut,
            "C": recipe.c,
            "copies": recipe.copies,
            "first_seed": _summarise(per_fold[:n]),
            "all_seeds": _summarise(per_fold),
            "folds_first_seed": per_fold[:n],
        }
        oof[recipe.name] = first_oof
        log.info(
            "%s: %d-fold x %d seeds: accuracy %.4f, balanced %.4f",
            recipe.name,
            folds,
            len(seeds),
            results[recipe.name]["all_seeds"]["mean_accuracy"],
            results[recipe.name]["all_seeds"]["mean_balanced_accuracy"],
        )
    return results, oof


def crossfit_calibration(
    spec: ModelSpec, raw: np.ndarray, y: np.ndarray, groups: np.ndarray, original: np.ndarray, folds: int, seed: int
) -> dict[str, float]:
    """Calibrated scores when each fold's out-of-fold outputs are calibrated on the *other*
    folds only, pooled over every original photo (ECE on ~35 photos per fold is mostly
    binning noise; pooled it is an estimate for a set of the held-out test's size)."""
    from sklearn.model_selection import StratifiedGroupKFold

    from inference.heads import apply_head
    from inference.metrics import fit_calibration

    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    probs = np.full((len(y), len(spec.classes)), np.nan)
    for tr, te in splitter.split(np.zeros(len(y)), y, groups):
        tr, te = tr[original[tr]], te[original[te]]
        cal = fit_calibration(spec.head, y[tr], raw[tr])
        probs[te] = apply_head(raw[te], spec.head, cal)
    scored = original & ~np.isnan(probs[:, 0])
    pooled = _fold_scores(spec, y[scored], probs[scored])
    uncalibrated = _fold_scores(spec, y[scored], apply_head(raw[scored], spec.head))
    return {**pooled, "ece_uncalibrated": uncalibrated["ece"], "n": int(scored.sum())}


def cached_features(
    cache: Path, spec: ModelSpec, backbone: Path, paths: Sequence[Path], images: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Features of ``images`` and of their mirror images, kept in ``cache`` (an ``.npz`` in
    the run folder) keyed by the backbone file, the input size and the file list, so that
    re-running the selection does not pay the forward passes again."""
    import hashlib

    key = hashlib.sha256()
    key.update(file_sha256(backbone).encode())
    key.update(str(images.shape).encode())
    for p in paths:
        key.update(str(p).encode())
    digest = key.hexdigest()
    if cache.is_file():
        with np.load(cache) as z:
            if str(z["key"]) == digest:
                log.info("features from %s", cache)
                return (
                    {n: z[f"plain_{n}"] for n in CUTS},
                    {n: z[f"mirrored_{n}"] for n in CUTS},
                )
    feats = extract_features(spec, backbone, images)
    flipped = extract_features(spec, backbone, np.ascontiguousarray(images[:, :, ::-1]))
    cache.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"key": np.array(digest)}
    arrays.update({f"plain_{n}": v for n, v in feats.items()})
    arrays.update({f"mirrored_{n}": v for n, v in flipped.items()})
    np.savez(cache, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
    return feats, flipped


# ----------------------------------------------------------------------------- run


def run_probe(
    model_id: str,
    data: Path,
    out: Path,
    *,
    registry: Path,
    model_dir: Path,
    backbone: Path | None = None,
    size: int = 224,
    c_grid: Sequence[float] = DEFAULT_C,
    cuts: Sequence[str] = tuple(CUTS),
    seeds: Sequence[int] = DEFAULT_SEEDS,
    folds: int = 5,
    install: bool = False,
    force: bool = False,
    version: str | None = None,
) -> dict[str, Any]:
    """Select, fit, check and (with ``install``) install the probe model of ``model_id``."""
    from inference.backbones import default_backbone_path
    from inference.backends.keras_image import KerasImageBackend, configure_tensorflow
    from inference.heads import apply_head
    from inference.metrics import classification_metrics, fit_calibration
    from inference.train import list_image_folder, load_images, raw_outputs, split_dirs

    t_start = time.perf_counter()
    configure_tensorflow("auto")
    spec = Registry.from_yaml(registry)[model_id]
    backbone = Path(backbone) if backbone is not None else default_backbone_path("efficientnet_lite0")
    if not backbone.is_file():
        raise ValueError(
            f"no backbone at {backbone}: run `python -m inference.train import-backbone efficientnet_lite0`"
        )
    unknown = [c for c in cuts if c not in CUTS]
    if unknown:
        raise ValueError(f"unknown cuts {unknown}; known: {sorted(CUTS)}")
    group_re = re.compile(str(spec.options.get("group_pattern", r"^([^_]+)")))
    original_re = re.compile(str(spec.options.get("original_pattern", r"^[A-Za-z]+\d+_\d+\.\w+$")))
    train_dir, val_dir = split_dirs(data)
    if val_dir is None:
        raise ValueError(f"{data}: needs a val folder")
    train_set = list_image_folder(train_dir, spec.class_ids)
    val_set = list_image_folder(val_dir, spec.class_ids)
    paths = [*train_set.paths, *val_set.paths]
    y = np.concatenate([train_set.labels, val_set.labels])
    is_val = np.r_[np.zeros(len(train_set.paths), bool), np.ones(len(val_set.paths), bool)]
    groups = []
    for p in paths:
        m = group_re.match(p.name)
        if m is None:
            raise ValueError(f"{p.name} does not match the group pattern {group_re.pattern!r}")
        groups.append(m.group(1))
    group_arr = np.array(groups)
    original = np.array([bool(original_re.match(p.name)) for p in paths])

    t0 = time.perf_counter()
    images = load_images(paths, size, "decode", crop=spec.input.crop)
    feats, flipped = cached_features(out / "features.npz", spec, backbone, paths, images)
    extract_s = time.perf_counter() - t0
    log.info("features of %d images (+ mirrored) in %.0fs", len(images), extract_s)

    recipes = [Recipe(cut, float(c), copies) for cut in cuts for c in c_grid for copies in (True, False)]
    t0 = time.perf_counter()
    cv_spec = spec.model_copy(update={"calibration": Calibration()})
    results, oof = cross_validate_probe(cv_spec, feats, flipped, y, group_arr, original, recipes, seeds, folds)
    best = max(recipes, key=lambda r: results[r.name]["all_seeds"]["mean_balanced_accuracy"])
    chosen = results[best.name]
    cal_cv = crossfit_calibration(cv_spec, oof[best.name], y, group_arr, original, folds, seeds[0])
    orig_mask = original & ~np.isnan(oof[best.name][:, 0])
    cal = fit_calibration(
        spec.head,
        y[orig_mask],
        oof[best.name][orig_mask],
        fitted_on=f"{folds}-fold patient-grouped out-of-fold outputs ({int(orig_mask.sum())} original photos)",
    )
    cv_s = time.perf_counter() - t0
    log.info("chosen %s: %s", best.name, json.dumps(chosen["all_seeds"]))

    # the served model: fitted on train only, so val stays an independent check
    t0 = time.perf_counter()
    tr = np.flatnonzero(~is_val & (original | best.copies))
    x_tr, y_tr = _train_rows(feats[best.cut], flipped[best.cut], tr, y)
    w, b = fit_probe(x_tr, y_tr, best.c)
    kernel, bias = dense_weights(spec.head, w, b, len(spec.classes))
    served = probe_spec(spec, best.cut, backbone, size)
    from inference.architectures import build_model

    model = build_model(served)
    model.get_layer("predictions").set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    final_spec = build_served_spec(served)
    final_spec = final_spec.model_copy(update={"calibration": cal})
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / f"{spec.id}.keras"
    model.save(model_path)
    fit_s = time.perf_counter() - t0

    import keras

    reloaded = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    backend = KerasImageBackend(final_spec, reloaded, "cpu")
    x_val = images[is_val]
    raw_val = raw_outputs(backend, x_val)
    expected = raw_from_dense(spec.head, feats[best.cut][is_val], kernel, bias)
    fold_in_error = float(np.abs(raw_val - expected).max())
    if fold_in_error > 1e-3:
        raise RuntimeError(f"the served model differs from the probe by {fold_in_error:.2e}")
    val_metrics = classification_metrics(val_set.labels, apply_head(raw_val, spec.head, cal), final_spec)

    summary: dict[str, Any] = {
        "model_id": spec.id,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "recipe": (
            "pretrained EfficientNet-Lite0, frozen; pooled features -> standardised class-balanced logistic regression"
        ),
        "backbone": str(backbone),
        "input_size": size,
        "grid": {"cuts": list(cuts), "C": [float(c) for c in c_grid]},
        "seeds": list(seeds),
        "folds": folds,
        "patients": len(set(groups)),
        "originals": int(original.sum()),
        "images": len(paths),
        "chosen": {"cut": best.cut, "C": best.c, "copies": best.copies, **chosen},
        "calibration_crossfit": cal_cv,
        "calibration": cal.model_dump(),
        "cv": results,
        "val_metrics": val_metrics,
        "fold_in_max_error": fold_in_error,
        "n_train": len(train_set.paths),
        "n_fit": len(tr),
        "n_val": len(val_set.paths),
        "parameters": int(model.count_params()),
        "weights_bytes": model_path.stat().st_size,
        "seconds": {
            "features": round(extract_s, 1),
            "cv": round(cv_s, 1),
            "final_fit": round(fit_s, 1),
            "total": round(time.perf_counter() - t_start, 1),
        },
    }
    (out / "probe_log.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    log.info("val: %s", json.dumps({k: val_metrics[k] for k in ("accuracy", "balanced_accuracy", "ece")}))
    if install:
        current = Registry.from_yaml(registry)[spec.id]
        old = (current.card.get("cv_evaluation") or {}).get("accuracy")
        new_acc = chosen["first_seed"]["mean_accuracy"]
        if old is not None and new_acc <= float(old) and not force:
            log.warning("%s: not installed: CV accuracy %.4f does not beat the installed %.4f", spec.id, new_acc, old)
            summary["installed"] = False
        else:
            install_probe(final_spec, model_path, summary, registry, model_dir, version)
            summary["installed"] = True
        (out / "probe_log.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return summary


def build_served_spec(served: ModelSpec) -> ModelSpec:
    """The spec as installed: the backbone path is a training input, not part of the model."""
    opts = {k: v for k, v in served.options.items() if k != "backbone_weights"}
    return served.model_copy(update={"options": opts})


def card_texts(spec: ModelSpec, s: dict[str, Any]) -> dict[str, Any]:
    """Card fields written from the run's log ``s`` (nothing typed by hand)."""
    ch = s["chosen"]
    first, rep = ch["first_seed"], ch["all_seeds"]
    c0, c1 = spec.class_ids
    ranked = sorted(s["cv"].values(), key=lambda r: -r["all_seeds"]["mean_balanced_accuracy"])
    runner = ranked[1] if len(ranked) > 1 else None
    cut_layer = CUTS[ch["cut"]][0]
    fitted_on = (
        "images (originals and the dataset's augmented copies)"
        if ch["copies"]
        else "original photos (the dataset's augmented copies left out: CV preferred that)"
    )
    margin = (
        f"; the runner-up ({runner['cut']}, C = {runner['C']:g}, "
        f"{'with' if runner['copies'] else 'without'} the augmented copies) scored balanced accuracy "
        f"{runner['all_seeds']['mean_balanced_accuracy']:.3f}"
        if runner
        else ""
    )
    cv_text = (
        f"{s['folds']}-fold patient-grouped CV over train+val ({s['patients']} patients; scored on the "
        f"{s['originals']} original photos only; seed {s['seeds'][0]}): accuracy {first['mean_accuracy']:.3f} +- "
        f"{first['std_accuracy']:.3f}, balanced accuracy {first['mean_balanced_accuracy']:.3f} +- "
        f"{first['std_balanced_accuracy']:.3f}, sensitivity ({c0} recall) {first[f'mean_recall_{c0}']:.3f}, "
        f"specificity ({c1} recall) {first[f'mean_recall_{c1}']:.3f}. Repeated over seeds {s['seeds']} "
        f"({len(s['seeds']) * s['folds']} folds): accuracy {rep['mean_accuracy']:.3f} +- {rep['std_accuracy']:.3f}, "
        f"balanced {rep['mean_balanced_accuracy']:.3f}. ECE over the {s['calibration_crossfit']['n']} pooled "
        f"out-of-fold photos {s['calibration_crossfit']['ece']:.3f} with cross-fitted calibration (each fold "
        f"calibrated on the others; {s['calibration_crossfit']['ece_uncalibrated']:.3f} uncalibrated). "
        "The recipe was chosen by this CV "
        f"among {len(s['cv'])} ({'/'.join(s['grid']['cuts'])} x C in {s['grid']['C']} x with/without the "
        f"dataset's augmented copies){margin}, so these "
        "figures are somewhat optimistic by that choice. Earlier recipes, same CV protocol: compact ResNet "
        "from scratch 0.655 +- 0.089."
    )
    return {
        "architecture": (
            f"ImageNet-pretrained EfficientNet-Lite0 (ported from PyTorch, `python -m inference.train "
            f"import-backbone efficientnet_lite0`), frozen, cut after `{cut_layer}` "
            f"({s['parameters'] / 1e6:.1f}M parameters) -> global average pool -> dense layer holding a "
            f"standardised, class-balanced logistic regression (C = {ch['C']:g}); Grad-CAM on "
            "`gradcam_features`, the 14x14x112 stride-16 map at 224 px."
        ),
        "input": (
            f"RGB {s['input_size']}x{s['input_size']} px (bilinear resize of the upload), pixels x 0.0078125 - "
            "0.9921875 (EfficientNet-Lite's (x - 127) / 128)."
        ),
        "training": (
            f"Recipe: {s['recipe']} (`python -m inference.train probe {spec.id} --data <datasets>/{spec.id}`). "
            f"Fitted on the train split's {s['n_fit']} {fitted_on}, each also mirrored left-right; "
            f"val ({s['n_val']} photos) kept out. {len(s['cv'])} recipes x {len(s['seeds'])} seeds x "
            f"{s['folds']} CV folds; wall time {s['seconds']['total'] / 60:.1f} min on 2 CPU cores (features "
            f"{s['seconds']['features']:.0f} s, CV {s['seconds']['cv']:.0f} s). Why frozen: fine-tuning the "
            "whole network once per CV fold and recipe does not fit two CPU cores and the 45-minute budget, "
            "and without that CV a recipe for 228 photos cannot be chosen honestly."
        ),
        "cv": cv_text,
        "cv_evaluation": {
            "data": f"{spec.id} train+val, {s['originals']} original photos, {s['folds']}-fold patient-grouped CV",
            "accuracy": round(first["mean_accuracy"], 4),
            "accuracy_std": round(first["std_accuracy"], 4),
            "balanced_accuracy": round(first["mean_balanced_accuracy"], 4),
            "sensitivity": round(first[f"mean_recall_{c0}"], 4),
            "specificity": round(first[f"mean_recall_{c1}"], 4),
            "ece": round(s["calibration_crossfit"]["ece"], 4),
        },
    }


def install_probe(
    spec: ModelSpec, model_path: Path, s: dict[str, Any], registry: Path, model_dir: Path, version: str | None
) -> ModelSpec:
    """Copy the model file and update the registry entry (weights, input, options, calibration, card)."""
    from inference.registry import bump_version
    from inference.specs_io import update_model_entry

    current = Registry.from_yaml(registry)[spec.id]
    dest_name = current.weights.file if current.weights else model_path.name
    dest = Path(dest_name) if Path(dest_name).is_absolute() else model_dir / dest_name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_path, dest)
    cal = s["calibration"]
    card = card_texts(spec, s)
    card["calibration"] = f"Platt a = {cal['platt_a']:.3f}, b = {cal['platt_b']:.3f} fitted on {cal['fitted_on']}."
    major = int(current.version.split(".")[0]) if current.version.split(".")[0].isdigit() else 0
    updates: dict[str, Any] = {
        "input": {"size": spec.input.size, "scale": spec.input.scale, "offset": spec.input.offset},
        "weights": {"file": dest_name, "sha256": file_sha256(dest)},
        "version": version or (f"{major + 1}.0.0" if major else bump_version(current.version)),
        "gradcam_layer": spec.gradcam_layer,
        "calibration": {k: round(v, 6) if isinstance(v, float) else v for k, v in cal.items() if v is not None},
        "options": {k: spec.options[k] for k in ("architecture", "lite_stages", "lite_head", "drop_connect")},
        "card": card,
    }
    new = update_model_entry(registry, spec.id, updates)
    log.info("installed %s (%s)", dest, new.version)
    return new


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m inference.train probe MODEL_ID --data DIR [--install]``."""
    from inference.train import DEFAULT_MODEL_DIR, DEFAULT_REGISTRY

    p = argparse.ArgumentParser(prog="python -m inference.train probe", description=__doc__.split("\n\n")[0])
    p.add_argument("model_id")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<model_id>_probe)")
    p.add_argument("--backbone", type=Path, default=None, help="imported backbone (default runs/backbones/...)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--c", type=float, nargs="+", default=list(DEFAULT_C), help="regularisation grid")
    p.add_argument("--cuts", nargs="+", default=list(CUTS), choices=sorted(CUTS))
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--install", action="store_true")
    p.add_argument("--force", action="store_true", help="install even if CV does not beat the installed model")
    p.add_argument("--registry", type=Path, default=DEFAULT_REGISTRY)
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--version", default=None)
    a = p.parse_args(argv)
    run_probe(
        a.model_id,
        a.data,
        a.out or PROJECT_ROOT / "runs" / f"{a.model_id}_probe",
        registry=a.registry,
        model_dir=a.model_dir,
        backbone=a.backbone,
        size=a.size,
        c_grid=a.c,
        cuts=a.cuts,
        seeds=a.seeds,
        folds=a.folds,
        install=a.install,
        force=a.force,
        version=a.version,
    )
    return 0
