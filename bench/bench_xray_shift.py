"""Chest X-ray under acquisition shift: operating threshold and calibration robustness.

Runs the installed ``chest_xray`` model through the app's own inference path
(``decode_image`` -> backend ``preprocess`` -> ``forward(explain=False)`` -> ``apply_head`` with
the spec's calibration and threshold, checked against ``predict(explain=False)``) on the
val split, once clean and once per deterministic acquisition shift applied to the decoded
pixels before preprocessing: gamma, contrast, brightness, centre crop, zoom-out borders,
JPEG re-encoding (decoded again by ``decode_image``), blur, noise, histogram equalisation,
CLAHE, low resolution and a few combinations. Each image is decoded once.

Per shift and operating point it reports accuracy, balanced accuracy, sensitivity and
specificity at the operating threshold and at 0.5, ECE (the app's definition: 15 bins,
confidence of the predicted class, so it depends on the threshold) and ECE at 0.5, NLL and
ROC AUC. Operating points compared (all thresholds are decision rules on the raw score, so
a calibration change re-expresses them without changing any label):

* ``shipped``: the registry's calibration and threshold;
* ``t=0.5``: the shipped calibration with threshold 0.5;
* ``pooled_sens97``: the shipped rule (largest threshold with sensitivity >= 0.97) applied
  to all shifted copies of val pooled;
* ``pooled_bal``: the threshold maximising balanced accuracy on the pooled shifted val;
* ``minimax``: the threshold maximising the worst-case balanced accuracy over shifts;
* ``minimax_c``: the same, subject to clean-val sensitivity >= 0.97 and balanced accuracy
  >= 0.97.

Calibrations compared: the registry's (``shipped``), Platt refitted on the pooled shifted val
(``platt_pooled``), Platt refitted on clean val (``platt_clean_refit``), and none. Each keeps
the shipped decision rule, re-expressed on its own scale, so only the probabilities change.

Because every choice here is fitted and scored on the same val images, two honesty checks
re-score each rule out of sample: leave-one-shift-family-out (choose on the shifts that
share no part with the scored one) and a 2-fold patient-grouped cross-fit (choose on one
half of the patients, every shift, score the other half).

This is still val data from one hospital: it shows which choice is stable under
plausible perturbations, not what the model does on another collection.

    .venv/bin/python bench/bench_xray_shift.py --data ../shared/datasets/chest_xray \\
        --out runs/xray_shift/shift.json [--registry REGISTRY] [--limit-per-class N]

Also writes the raw scores (``.npz`` next to ``--out``). Takes 3-6 minutes on 2 busy cores.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import re
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from PIL import Image, ImageFilter, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.heads import apply_head
from inference.metrics import (
    classification_metrics,
    fit_calibration,
    nll,
    roc_auc_binary,
    threshold_for_sensitivity,
)
from inference.registry import Calibration, Head, ModelSpec

log = logging.getLogger("bench.xray_shift")

_EPS = 1e-7  # the clip inference.heads uses before logit
GROUP_RE = re.compile(r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)")
TARGET_SENSITIVITY = 0.97
MIN_CLEAN_BALANCED = 0.97

# ----------------------------------------------------------------------------- shifts

Shift = Callable[[np.ndarray, int], np.ndarray]


def _u8(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _gray(x: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(x).convert("L"))


def gamma(g: float) -> Shift:
    """``255 * (x / 255) ** g``: g < 1 brightens mid-tones (a softer look), g > 1 darkens."""
    lut = _u8(255.0 * (np.arange(256) / 255.0) ** g)
    return lambda x, _i: lut[x]


def contrast(c: float) -> Shift:
    """Stretch (c > 1) or flatten (c < 1) around the image's mean grey."""

    def f(x: np.ndarray, _i: int) -> np.ndarray:
        xf = x.astype(np.float32)
        return _u8(xf.mean() + c * (xf - xf.mean()))

    return f


def brightness(k: float) -> Shift:
    """Multiply by ``k`` and clip (exposure / detector gain)."""
    lut = _u8(np.arange(256) * k)
    return lambda x, _i: lut[x]


def centre_crop(frac: float) -> Shift:
    """Keep the central ``frac`` of each side (tighter collimation / zoomed-in field of view)."""

    def f(x: np.ndarray, _i: int) -> np.ndarray:
        h, w = x.shape[:2]
        ch, cw = round(h * frac), round(w * frac)
        top, left = (h - ch) // 2, (w - cw) // 2
        return np.ascontiguousarray(x[top : top + ch, left : left + cw])

    return f


def pad(frac: float, value: int) -> Shift:
    """Zoom out: a border of ``frac`` of the side on every edge, black (0) or white (255)."""

    def f(x: np.ndarray, _i: int) -> np.ndarray:
        h, w = x.shape[:2]
        ph, pw = round(h * frac), round(w * frac)
        return np.pad(x, ((ph, ph), (pw, pw), (0, 0)), constant_values=value)

    return f


def jpeg(quality: int) -> Shift:
    """Re-encode as JPEG and decode it again with the app's ``decode_image``."""
    from inference.imaging import decode_image

    def f(x: np.ndarray, _i: int) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, format="JPEG", quality=quality)
        return decode_image(buf.getvalue()).pixels

    return f


def blur(sigma: float) -> Shift:
    """Gaussian blur (Pillow's radius is the standard deviation), in source pixels."""
    return lambda x, _i: np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(sigma)))


def noise(sd: float, seed: int = 1234) -> Shift:
    """Additive Gaussian noise of ``sd`` grey levels, the same on all channels, seeded per image."""

    def f(x: np.ndarray, i: int) -> np.ndarray:
        rng = np.random.default_rng((seed, i))
        n = rng.normal(0.0, sd, x.shape[:2]).astype(np.float32)[:, :, None]
        return _u8(x.astype(np.float32) + n)

    return f


def equalize(x: np.ndarray, _i: int) -> np.ndarray:
    """Global histogram equalisation of the grey image."""
    return _rgb(np.asarray(ImageOps.equalize(Image.fromarray(_gray(x)))))


def clahe(x: np.ndarray, _i: int) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (clip 2, 8x8 tiles), common in PACS."""
    import cv2

    op = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    return _rgb(np.asarray(op.apply(_gray(x))))


def lowres(frac: float) -> Shift:
    """Downsample to ``frac`` of the side and back (a low-resolution digitiser or export)."""

    def f(x: np.ndarray, _i: int) -> np.ndarray:
        h, w = x.shape[:2]
        small = Image.fromarray(x).resize((round(w * frac), round(h * frac)), Image.Resampling.BILINEAR)
        return np.asarray(small.resize((w, h), Image.Resampling.BILINEAR))

    return f


def chain(*fs: Shift) -> Shift:
    def f(x: np.ndarray, i: int) -> np.ndarray:
        for g in fs:
            x = g(x, i)
        return x

    return f


def identity(x: np.ndarray, _i: int) -> np.ndarray:
    return x


def build_shifts() -> dict[str, Shift]:
    """Name -> shift. A ``+`` joins the parts of a combination (used for leave-family-out)."""
    base: dict[str, Shift] = {
        "identity": identity,
        "gamma0.6": gamma(0.6),
        "gamma1.6": gamma(1.6),
        "contrast0.6": contrast(0.6),
        "contrast1.4": contrast(1.4),
        "bright0.8": brightness(0.8),
        "bright1.2": brightness(1.2),
        "crop80": centre_crop(0.8),
        "pad12black": pad(0.12, 0),
        "pad12white": pad(0.12, 255),
        "jpeg25": jpeg(25),
        "blur1.5": blur(1.5),
        "noise8": noise(8.0),
        "equalize": equalize,
        "clahe": clahe,
        "lowres0.5": lowres(0.5),
    }
    combos = [
        ("gamma1.6", "pad12black"),
        ("contrast0.6", "blur1.5", "jpeg25"),
        ("equalize", "crop80"),
        ("bright1.2", "noise8"),
        ("gamma0.6", "contrast1.4", "pad12white"),
    ]
    shifts = dict(base)
    for parts in combos:
        shifts["+".join(parts)] = chain(*(base[p] for p in parts))
    return shifts


def families(name: str) -> set[str]:
    """The base shifts a (combined) shift is made of."""
    return set(name.split("+"))


# ----------------------------------------------------------------------------- data


@dataclass
class Scores:
    """Raw model outputs (P(positive) before calibration), one row per shift."""

    shifts: list[str]
    raw: np.ndarray  # (S, N)
    y: np.ndarray  # (N,) 1 = positive class
    groups: list[str]
    seconds: dict[str, float]


def raw_scores(backend: Any, images: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
    """The backend's raw output for each image: its own preprocess and forward, no Grad-CAM."""
    out = []
    for i in range(0, len(images), batch_size):
        x = backend.preprocess(images[i : i + batch_size])
        raw, _ = backend.forward(x, explain=False)
        out.append(np.asarray(raw, np.float64).reshape(len(x), -1)[:, 0])
    return np.concatenate(out)


def collect(
    spec: ModelSpec, backend: Any, paths: Sequence[Path], labels: np.ndarray, shifts: dict[str, Shift], batch: int
) -> Scores:
    from inference.imaging import decode_image

    positive = spec.class_ids.index(spec.positive_class or spec.class_ids[1])
    t0 = time.perf_counter()
    images = [decode_image(p.read_bytes(), filename=p.name).pixels for p in paths]
    seconds = {"decode": time.perf_counter() - t0}
    # the app path: predict(explain=False) must agree with preprocess + forward + apply_head
    check = backend.predict(images[:batch], explain=False)
    got = np.array([pred.probabilities[spec.class_ids[positive]] for pred in check.predictions])
    rows = []
    for name, fn in shifts.items():
        t0 = time.perf_counter()
        shifted = [fn(img, i) for i, img in enumerate(images)]
        t1 = time.perf_counter()
        raw = raw_scores(backend, shifted, batch)
        seconds[name] = time.perf_counter() - t0
        log.info("%-34s shift %5.1f s, predict %5.1f s", name, t1 - t0, time.perf_counter() - t1)
        if name == "identity":
            want = apply_head(raw[:batch, None], spec.head, spec.calibration)[:, 1]
            if not np.allclose(got, want, atol=1e-6):
                raise RuntimeError("preprocess + forward + apply_head disagrees with backend.predict")
        rows.append(raw)
    groups = []
    for p in paths:
        m = GROUP_RE.match(p.name)
        groups.append(m.group(1) if m else p.stem)
    y = (np.asarray(labels) == positive).astype(np.int64)
    return Scores(list(shifts), np.stack(rows), y, groups, seconds)


# ----------------------------------------------------------------------------- operating points


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def calibrated(raw: np.ndarray, cal: Calibration) -> np.ndarray:
    """P(positive) as the app reports it."""
    return apply_head(raw[:, None], Head.SIGMOID_SINGLE, cal)[:, 1]


def to_prob_threshold(z: float, cal: Calibration) -> float:
    """The threshold on the calibrated probability equal to raw-logit threshold ``z``."""
    return float(1.0 / (1.0 + math.exp(-(cal.platt_a * z + cal.platt_b))))


def to_logit_threshold(t: float, cal: Calibration) -> float:
    """The raw-logit threshold equal to threshold ``t`` on the calibrated probability."""
    return float((float(logit(np.array([t]))[0]) - cal.platt_b) / cal.platt_a)


def rates(y: np.ndarray, z: np.ndarray, thr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity of ``z >= thr`` for every threshold in ``thr``."""
    pos, neg = np.sort(z[y == 1]), np.sort(z[y == 0])
    sens = 1.0 - np.searchsorted(pos, thr, side="left") / max(1, pos.size)
    spec = np.searchsorted(neg, thr, side="left") / max(1, neg.size)
    return sens, spec


def candidates(z: np.ndarray) -> np.ndarray:
    """Midpoints between consecutive distinct scores, plus one below and one above all."""
    u = np.unique(z)
    return np.concatenate([[u[0] - 1.0], (u[1:] + u[:-1]) / 2.0, [u[-1] + 1.0]])


def pick(score: np.ndarray, tiebreak: np.ndarray, thr: np.ndarray, ok: np.ndarray | None = None) -> float:
    """The threshold with the best ``score`` (then ``tiebreak``); the median of exact ties."""
    s = np.where(ok, score, -np.inf) if ok is not None else score
    best = s.max()
    tied = np.flatnonzero(s == best)
    tb = tiebreak[tied]
    tied = tied[tb == tb.max()]
    return float(thr[tied[len(tied) // 2]])


def rule_threshold(rule: str, y: np.ndarray, z: np.ndarray, z_clean: np.ndarray, cal: Calibration) -> float | None:
    """Raw-logit threshold that a selection rule picks on scores ``z`` ``(S, N)``.

    ``z_clean`` ``(N,)`` are the clean scores of the same images (the shipped rule and the
    constraint of ``minimax_c`` use them). None for the fixed rules (``shipped``, ``t=0.5``)
    and when no threshold meets the constraint.
    """
    if rule in ("shipped", "t=0.5"):
        return None
    if rule == "clean_sens97":  # the shipped rule, re-run (for the cross-fit)
        p = calibrated_from_logit(z_clean, cal)
        return to_logit_threshold(threshold_for_sensitivity(y, p, TARGET_SENSITIVITY), cal)
    if rule == "pooled_sens97":
        p = calibrated_from_logit(z.ravel(), cal)
        return to_logit_threshold(threshold_for_sensitivity(np.tile(y, z.shape[0]), p, TARGET_SENSITIVITY), cal)
    thr = candidates(z.ravel())
    if rule == "pooled_bal":
        bal = np.mean(rates(np.tile(y, z.shape[0]), z.ravel(), thr), axis=0)
        return pick(bal, bal, thr)
    bal_s = np.stack([np.mean(rates(y, row, thr), axis=0) for row in z])
    worst, mean = bal_s.min(axis=0), bal_s.mean(axis=0)
    if rule == "minimax":
        return pick(worst, mean, thr)
    if rule == "minimax_c":
        sens_c, spec_c = rates(y, z_clean, thr)
        ok = (sens_c >= TARGET_SENSITIVITY) & ((sens_c + spec_c) / 2.0 >= MIN_CLEAN_BALANCED)
        return pick(worst, mean, thr, ok) if ok.any() else None
    raise ValueError(rule)


def calibrated_from_logit(z: np.ndarray, cal: Calibration) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(cal.platt_a * np.asarray(z, np.float64) + cal.platt_b)))


RULES = ("shipped", "t=0.5", "pooled_sens97", "pooled_bal", "minimax", "minimax_c")


# ----------------------------------------------------------------------------- metrics


def balanced_ece(y: np.ndarray, p: np.ndarray, n_bins: int = 15) -> float:
    """ECE at 0.5 with the classes reweighted to 50/50: a check that does not lean on val's prevalence."""
    pred = (p >= 0.5).astype(np.int64)
    conf = np.where(pred == 1, p, 1.0 - p)
    correct = (pred == y).astype(np.float64)
    w = np.where(y == 1, 0.5 / max(1, int(y.sum())), 0.5 / max(1, int((y == 0).sum())))
    idx = np.clip(np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1), conf, side="left") - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = idx == b
        if w[m].sum() > 0:
            total += float(w[m].sum() * abs(np.average(correct[m], weights=w[m]) - np.average(conf[m], weights=w[m])))
    return total / float(w.sum())


def point_metrics(
    spec: ModelSpec, y: np.ndarray, raw: np.ndarray, cal: Calibration, threshold: float
) -> dict[str, Any]:
    """The app's metrics for one shift at one (calibration, threshold), plus the same at 0.5."""
    p = calibrated(raw, cal)
    probs = np.stack([1.0 - p, p], axis=1)
    at = classification_metrics(y, probs, spec.model_copy(update={"calibration": cal, "threshold": threshold}))
    half = classification_metrics(y, probs, spec.model_copy(update={"calibration": cal, "threshold": 0.5}))
    auc = roc_auc_binary(y, raw)
    return {
        "accuracy": at["accuracy"],
        "balanced_accuracy": at["balanced_accuracy"],
        "sensitivity": at["sensitivity"],
        "specificity": at["specificity"],
        "ece": at["ece"],
        "accuracy_05": half["accuracy"],
        "balanced_accuracy_05": half["balanced_accuracy"],
        "sensitivity_05": half["sensitivity"],
        "specificity_05": half["specificity"],
        "ece_05": half["ece"],
        "ece_05_classbal": balanced_ece(y, p),
        "nll": nll(y, probs),
        "mean_p": float(p.mean()),
        "roc_auc": auc,
    }


def summarise(per_shift: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rows = list(per_shift.values())

    def worst(k: str, hi: bool = False) -> float:
        vals = [float(r[k]) for r in rows]
        return max(vals) if hi else min(vals)

    out: dict[str, Any] = {
        "clean_sensitivity": per_shift["identity"]["sensitivity"],
        "clean_specificity": per_shift["identity"]["specificity"],
        "clean_balanced": per_shift["identity"]["balanced_accuracy"],
        "clean_ece": per_shift["identity"]["ece"],
        "worst_balanced": worst("balanced_accuracy"),
        "worst_balanced_shift": min(per_shift, key=lambda s: per_shift[s]["balanced_accuracy"]),
        "mean_balanced": float(np.mean([r["balanced_accuracy"] for r in rows])),
        "worst_sensitivity": worst("sensitivity"),
        "worst_specificity": worst("specificity"),
        "worst_ece": worst("ece", hi=True),
        "mean_ece": float(np.mean([r["ece"] for r in rows])),
        "worst_ece_05": worst("ece_05", hi=True),
        "mean_ece_05": float(np.mean([r["ece_05"] for r in rows])),
        "worst_ece_05_classbal": worst("ece_05_classbal", hi=True),
        "mean_ece_05_classbal": float(np.mean([r["ece_05_classbal"] for r in rows])),
        "clean_nll": per_shift["identity"]["nll"],
        "worst_nll": worst("nll", hi=True),
        "mean_nll": float(np.mean([r["nll"] for r in rows])),
    }
    return out


def evaluate_rules(
    spec: ModelSpec, sc: Scores, cal: Calibration, z_thr: dict[str, float | None]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for rule, zt in z_thr.items():
        if zt is None and rule not in ("shipped", "t=0.5"):
            continue
        fixed = {"shipped": spec.threshold, "t=0.5": 0.5}
        t = fixed[rule] if zt is None else to_prob_threshold(zt, cal)
        t = round(t, 6)  # as it would be written to the registry
        per = {s: point_metrics(spec, sc.y, sc.raw[i], cal, t) for i, s in enumerate(sc.shifts)}
        out[rule] = {
            "threshold": t,
            "raw_logit_threshold": to_logit_threshold(t, cal),
            "per_shift": per,
            "summary": summarise(per),
        }
    return out


def crossfit(spec: ModelSpec, sc: Scores, cal: Calibration, rules: Sequence[str]) -> dict[str, Any]:
    """2-fold patient-grouped cross-fit: each rule chooses on one half, is scored on the other."""
    fold = np.array([zlib.crc32(g.encode()) % 2 for g in sc.groups])
    z = logit(sc.raw)
    clean = sc.shifts.index("identity")
    out: dict[str, Any] = {}
    for rule in rules:
        preds = np.zeros(z.shape, bool)
        thresholds = []
        for f in (0, 1):
            train, test = fold != f, fold == f
            zt = rule_threshold(rule, sc.y[train], z[:, train], z[clean, train], cal)
            if zt is None:
                zt = to_logit_threshold(spec.threshold if rule != "t=0.5" else 0.5, spec.calibration)
            thresholds.append(zt)
            preds[:, test] = z[:, test] >= zt
        per = {}
        for i, s in enumerate(sc.shifts):
            tp = int((preds[i] & (sc.y == 1)).sum())
            tn = int((~preds[i] & (sc.y == 0)).sum())
            sens, spec_ = tp / max(1, int(sc.y.sum())), tn / max(1, int((sc.y == 0).sum()))
            per[s] = {"sensitivity": sens, "specificity": spec_, "balanced_accuracy": (sens + spec_) / 2}
        bal = {s: v["balanced_accuracy"] for s, v in per.items()}
        out[rule] = {
            "raw_logit_thresholds": thresholds,
            "per_shift": per,
            "clean_sensitivity": per["identity"]["sensitivity"],
            "clean_balanced": per["identity"]["balanced_accuracy"],
            "worst_balanced": min(bal.values()),
            "worst_balanced_shift": min(bal, key=lambda k: bal[k]),
            "mean_balanced": float(np.mean(list(bal.values()))),
            "worst_specificity": min(v["specificity"] for v in per.values()),
            "worst_sensitivity": min(v["sensitivity"] for v in per.values()),
        }
    out["folds"] = {"images": np.bincount(fold, minlength=2).tolist(), "patients": len(set(sc.groups))}
    return out


def leave_family_out(spec: ModelSpec, sc: Scores, rules: Sequence[str]) -> dict[str, Any]:
    """Each shift scored by a threshold / Platt fit chosen without any shift sharing a part with it."""
    z = logit(sc.raw)
    out: dict[str, Any] = {r: {} for r in rules}
    out["platt_pooled"] = {}
    clean = z[sc.shifts.index("identity")]
    for i, s in enumerate(sc.shifts):
        keep = [j for j, t in enumerate(sc.shifts) if not (families(t) & families(s))]
        for rule in rules:
            # minimax_c keeps its constraint on clean val even when identity is the scored row
            # (the shipped threshold was chosen on clean val too)
            zt = rule_threshold(rule, sc.y, z[keep], clean, spec.calibration)
            if zt is None:
                continue
            pred = z[i] >= zt
            sens = float((pred & (sc.y == 1)).sum() / sc.y.sum())
            spc = float((~pred & (sc.y == 0)).sum() / (sc.y == 0).sum())
            out[rule][s] = {"sensitivity": sens, "specificity": spc, "balanced_accuracy": (sens + spc) / 2}
        yy = np.tile(sc.y, len(keep))
        cal = fit_calibration(Head.SIGMOID_SINGLE, yy, sc.raw[keep].ravel()[:, None])
        out["platt_pooled"][s] = point_metrics(spec, sc.y, sc.raw[i], cal, 0.5) | {
            "platt_a": cal.platt_a,
            "platt_b": cal.platt_b,
        }
    for rule in rules:
        if out[rule]:
            bal = {s: v["balanced_accuracy"] for s, v in out[rule].items()}
            out[rule] = {
                "per_shift": out[rule],
                "worst_balanced": min(bal.values()),
                "worst_balanced_shift": min(bal, key=lambda k: bal[k]),
                "mean_balanced": float(np.mean(list(bal.values()))),
            }
    per_cal = out["platt_pooled"]
    out["platt_pooled"] = {
        "per_shift": per_cal,
        "worst_ece_05": max(v["ece_05"] for v in per_cal.values()),
        "mean_ece_05": float(np.mean([v["ece_05"] for v in per_cal.values()])),
        "worst_nll": max(v["nll"] for v in per_cal.values()),
        "mean_nll": float(np.mean([v["nll"] for v in per_cal.values()])),
    }
    return out


# ----------------------------------------------------------------------------- report


def table(title: str, per: dict[str, dict[str, Any]], threshold: float) -> str:
    head = (
        f"{title} (threshold {threshold:.4f} on the calibrated probability)\n"
        f"{'shift':<34} {'acc':>6} {'bal':>6} {'sens':>6} {'spec':>6} | {'bal.5':>6} {'sens.5':>6} {'spec.5':>6}"
        f" | {'ECE':>6} {'ECE.5':>6} {'NLL':>6} {'meanP':>6} {'AUC':>6}"
    )
    lines = [head, "-" * len(head.splitlines()[1])]
    for s, m in per.items():
        lines.append(
            f"{s:<34} {m['accuracy']:6.3f} {m['balanced_accuracy']:6.3f} {m['sensitivity']:6.3f} "
            f"{m['specificity']:6.3f} | {m['balanced_accuracy_05']:6.3f} {m['sensitivity_05']:6.3f} "
            f"{m['specificity_05']:6.3f} | {m['ece']:6.3f} {m['ece_05']:6.3f} {m['nll']:6.3f} {m['mean_p']:6.3f} "
            f"{m['roc_auc']:6.4f}"
        )
    return "\n".join(lines)


def compare_table(results: dict[str, dict[str, Any]]) -> str:
    rules = list(results)
    head = f"{'shift':<34} " + " ".join(f"{r:>15}" for r in rules)
    lines = ["balanced accuracy (sensitivity/specificity) per rule, shipped calibration", head, "-" * len(head)]
    for s in results[rules[0]]["per_shift"]:
        cells = []
        for r in rules:
            m = results[r]["per_shift"][s]
            cells.append(f"{m['balanced_accuracy']:.3f} {m['sensitivity']:.2f}/{m['specificity']:.2f}")
        lines.append(f"{s:<34} " + " ".join(f"{c:>15}" for c in cells))
    return "\n".join(lines)


def summary_table(title: str, rows: dict[str, dict[str, Any]], keys: Sequence[str]) -> str:
    head = f"{'':<22} " + " ".join(f"{k:>20}" for k in keys)
    lines = [title, head, "-" * len(head)]
    for name, r in rows.items():
        cells = []
        for k in keys:
            v = r.get(k)
            cells.append(f"{v:>20.4f}" if isinstance(v, float) else f"{v!s:>20}")
        lines.append(f"{name:<22} " + " ".join(cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/chest_xray"))
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--model", default="chest_xray")
    ap.add_argument("--registry", type=Path, default=None)
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit-per-class", type=int, default=None, help="a quick smoke run")
    ap.add_argument("--shifts", default=None, help="comma-separated subset of shift names")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from inference.evaluate import eval_dir
    from inference.manager import ModelManager
    from inference.registry import Registry
    from inference.train import DEFAULT_MODEL_DIR, DEFAULT_REGISTRY, list_image_folder

    registry = Registry.from_yaml(a.registry or DEFAULT_REGISTRY)
    spec = registry[a.model]
    if spec.head is not Head.SIGMOID_SINGLE:
        raise SystemExit(f"{a.model}: this study needs a sigmoid_single head, got {spec.head.value}")
    folder = list_image_folder(eval_dir(a.data), spec.class_ids, a.limit_per_class)
    shifts = build_shifts()
    if a.shifts:
        wanted = ["identity", *(s for s in a.shifts.split(",") if s != "identity")]
        shifts = {s: shifts[s] for s in wanted}
    manager = ModelManager(registry, a.model_dir or DEFAULT_MODEL_DIR, device="cpu")
    t0 = time.perf_counter()
    backend = manager.get(a.model)
    log.info(
        "loaded %s in %.1f s; %d images, %d shifts", a.model, time.perf_counter() - t0, len(folder.paths), len(shifts)
    )
    sc = collect(spec, backend, folder.paths, folder.labels, shifts, a.batch_size)
    manager.unload(a.model)

    clean = sc.shifts.index("identity")
    z = logit(sc.raw)
    shipped = spec.calibration
    yy = np.tile(sc.y, len(sc.shifts))

    def rounded(cal: Calibration) -> Calibration:  # as it would be written to the registry
        return cal.model_copy(update={"platt_a": round(cal.platt_a, 6), "platt_b": round(cal.platt_b, 6)})

    n_shifted = len(sc.shifts) - 1
    pooled_on = f"val ({sc.y.size} images), clean + {n_shifted} acquisition shifts pooled (bench/bench_xray_shift.py)"
    calibrations = {
        "shipped": shipped,
        "platt_pooled": rounded(fit_calibration(Head.SIGMOID_SINGLE, yy, sc.raw.ravel()[:, None], pooled_on)),
        "platt_clean_refit": rounded(fit_calibration(Head.SIGMOID_SINGLE, sc.y, sc.raw[clean][:, None], "clean val")),
        "none": Calibration(),
    }
    z_thr: dict[str, float | None] = {r: rule_threshold(r, sc.y, z, z[clean], shipped) for r in RULES}
    results = evaluate_rules(spec, sc, shipped, z_thr)

    # calibrations: ECE per shift with the decision rule fixed (shipped), re-expressed per calibration
    z_shipped = to_logit_threshold(spec.threshold, shipped)
    cal_results: dict[str, Any] = {}
    for name, cal in calibrations.items():
        t = round(to_prob_threshold(z_shipped, cal), 6) if name != "shipped" else spec.threshold
        per = {s: point_metrics(spec, sc.y, sc.raw[i], cal, t) for i, s in enumerate(sc.shifts)}
        cal_results[name] = {
            "platt_a": cal.platt_a,
            "platt_b": cal.platt_b,
            "fitted_on": cal.fitted_on,
            "threshold_for_shipped_rule": t,
            "per_shift": per,
            "summary": summarise(per),
        }
    ship, pool = cal_results["shipped"], cal_results["platt_pooled"]
    proposal = {
        "calibration": {"platt_a": pool["platt_a"], "platt_b": pool["platt_b"], "fitted_on": pool["fitted_on"]},
        "threshold": pool["threshold_for_shipped_rule"],
        "same_labels_as_shipped_on_every_shift": all(
            pool["per_shift"][s][k] == ship["per_shift"][s][k]
            for s in sc.shifts
            for k in ("sensitivity", "specificity")
        ),
        "note": "the shipped decision rule re-expressed on the pooled-shift Platt scale (labels unchanged)",
    }
    xfit = crossfit(spec, sc, shipped, ["clean_sens97", "t=0.5", "pooled_sens97", "pooled_bal", "minimax", "minimax_c"])
    lfo = leave_family_out(spec, sc, ["pooled_sens97", "pooled_bal", "minimax", "minimax_c"])

    print()
    print(table("SHIPPED operating point", results["shipped"]["per_shift"], spec.threshold))
    for rule in ("pooled_sens97", "minimax", "minimax_c"):
        if rule in results:
            print()
            print(table(f"{rule} (shipped calibration)", results[rule]["per_shift"], results[rule]["threshold"]))
    print()
    print(compare_table(results))
    print()
    keys = ("threshold", "clean_sensitivity", "clean_balanced", "worst_balanced", "worst_balanced_shift")
    keys2 = ("mean_balanced", "worst_sensitivity", "worst_specificity", "worst_ece", "mean_ece")
    rows = {r: {"threshold": v["threshold"], **v["summary"]} for r, v in results.items()}
    print(summary_table("threshold rules, in-sample (chosen and scored on the same val images)", rows, keys))
    print(summary_table("", rows, keys2))
    print()
    xrows = {r: v for r, v in xfit.items() if r != "folds"}
    print(
        summary_table(
            f"2-fold patient-grouped cross-fit ({xfit['folds']['patients']} patients, images per fold "
            f"{xfit['folds']['images']})",
            xrows,
            ("clean_sensitivity", "clean_balanced", "worst_balanced", "worst_balanced_shift", "mean_balanced"),
        )
    )
    print()
    lrows = {r: v for r, v in lfo.items() if r != "platt_pooled" and v}
    print(
        summary_table(
            "leave-one-shift-family-out (threshold chosen without the scored shift's family)",
            lrows,
            ("worst_balanced", "worst_balanced_shift", "mean_balanced"),
        )
    )
    print()
    crow = {
        n: {
            "platt_a": v["platt_a"],
            "platt_b": v["platt_b"],
            "threshold": v["threshold_for_shipped_rule"],
            **v["summary"],
        }
        for n, v in cal_results.items()
    }
    crow["platt_pooled (LOFO)"] = {k: v for k, v in lfo["platt_pooled"].items() if k != "per_shift"}
    print(
        summary_table(
            "calibrations (decision rule fixed at the shipped one; ECE = app definition at that threshold, "
            "ECE.5 = at 0.5)",
            crow,
            ("platt_a", "platt_b", "threshold", "clean_ece", "worst_ece", "mean_ece", "worst_ece_05", "mean_ece_05"),
        )
    )
    print(
        summary_table(
            "",
            crow,
            ("worst_ece_05_classbal", "mean_ece_05_classbal", "clean_nll", "worst_nll", "mean_nll"),
        )
    )
    print()
    head = f"{'shift':<34} " + " ".join(f"{n[:20]:>20}" for n in cal_results) + f" {'pooled LOFO':>20}"
    print("ECE at 0.5 / app ECE at the shipped rule, per shift and calibration")
    print(head)
    for s in sc.shifts:
        cells = [
            f"{cal_results[n]['per_shift'][s]['ece_05']:.3f} / {cal_results[n]['per_shift'][s]['ece']:.3f}"
            for n in cal_results
        ]
        cells.append(f"{lfo['platt_pooled']['per_shift'][s]['ece_05']:.3f}")
        print(f"{s:<34} " + " ".join(f"{c:>20}" for c in cells))

    print()
    print(f"pooled-shift Platt with the shipped decision rule: {json.dumps(proposal)}")
    out = {
        "model": {
            "id": spec.id,
            "version": spec.version,
            "sha256": spec.weights.sha256 if spec.weights else None,
            "threshold": spec.threshold,
            "calibration": spec.calibration.model_dump(),
        },
        "data": str(eval_dir(a.data)),
        "n": int(sc.y.size),
        "positives": int(sc.y.sum()),
        "shifts": sc.shifts,
        "seconds": sc.seconds,
        "rules": results,
        "calibrations": cal_results,
        "crossfit": xfit,
        "leave_family_out": lfo,
        "pooled_platt_proposal": proposal,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1, default=float), encoding="utf-8")
    np.savez_compressed(a.out.with_suffix(".npz"), raw=sc.raw, y=sc.y, shifts=np.array(sc.shifts))
    log.info("wrote %s (and raw scores to %s)", a.out, a.out.with_suffix(".npz"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
