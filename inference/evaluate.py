"""Evaluate an installed model on an ImageFolder through the app's own inference path.

``python -m inference.evaluate <model_id> --data DIR --out OUTDIR``

``DIR/val`` is evaluated when ``DIR`` has ``train/`` and ``val/``; otherwise ``DIR`` itself
must hold one folder per class. Every file is read as bytes, decoded with
:func:`inference.imaging.decode_image`, and classified in batches by the backend the
:class:`~inference.manager.ModelManager` loads for the registry spec (sha256 checked), so
preprocessing, calibration and the operating threshold are exactly what users get.

Writes ``OUTDIR/metrics.json``, ``OUTDIR/confusion_matrix.png`` and
``OUTDIR/reliability.png``. ``--write-card`` also puts the metrics and the measured CPU cost
(fused predict + explanation, batch 1, median) into the model's card in the registry.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inference.backends.base import Backend
from inference.metrics import classification_metrics, reliability_bins
from inference.registry import Head, ModelSpec, Registry
from inference.train import DEFAULT_MODEL_DIR, DEFAULT_REGISTRY, ImageFolder, list_image_folder

log = logging.getLogger("inference.evaluate")

METRIC_KEYS = ("accuracy", "balanced_accuracy", "ece", "per_class", "confusion_matrix", "roc_auc")
BINARY_KEYS = ("sensitivity", "specificity", "threshold")


def eval_dir(data: Path) -> Path:
    """``data/val`` for a train/val root, else ``data`` itself."""
    data = Path(data)
    if (data / "train").is_dir() and (data / "val").is_dir():
        return data / "val"
    return data


def predict_files(backend: Backend, paths: Sequence[Path], batch_size: int = 32) -> np.ndarray:
    """Class probabilities ``(N, n_classes)`` for image files, via ``decode_image`` + ``predict``."""
    from tqdm import tqdm

    from inference.imaging import decode_image

    ids = backend.spec.class_ids
    rows: list[list[float]] = []
    for i in tqdm(range(0, len(paths), batch_size), desc="evaluate", disable=None):
        chunk = paths[i : i + batch_size]
        keep_alpha = backend.spec.input.keep_alpha
        images = [decode_image(p.read_bytes(), filename=p.name).model_pixels(keep_alpha) for p in chunk]
        out = backend.predict(images, explain=False)
        rows.extend([pred.probabilities[c] for c in ids] for pred in out.predictions)
    return np.asarray(rows, np.float64).reshape(len(paths), len(ids))


def metrics_json(metrics: dict[str, Any]) -> dict[str, Any]:
    """The keys ``metrics.json`` holds: the common ones, plus the binary ones for 2 classes."""
    keys = METRIC_KEYS + (BINARY_KEYS if "sensitivity" in metrics else ())
    return {k: metrics[k] for k in keys}


def plot_confusion(cm: np.ndarray, class_ids: Sequence[str], path: Path, title: str) -> None:
    """Save a confusion-matrix heatmap (rows: true class, columns: predicted)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    n = len(class_ids)
    fig = Figure(figsize=(1.2 * n + 2.5, 1.0 * n + 2.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    row = cm.sum(axis=1, keepdims=True)
    ax.imshow(np.divide(cm, row, out=np.zeros(cm.shape), where=row > 0), cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            colour = "white" if row[i, 0] and cm[i, j] / row[i, 0] > 0.5 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=colour, fontsize=9)
    ax.set_xticks(range(n), class_ids, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_ids, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def plot_reliability(bins: list[dict[str, float]], ece: float, path: Path, title: str) -> None:
    """Save a reliability diagram: accuracy vs confidence per bin, with counts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = bins[0]["hi"] - bins[0]["lo"]
    used = [b for b in bins if b["count"]]
    ax.bar(
        [b["lo"] for b in used],
        [b["accuracy"] for b in used],
        width=width,
        align="edge",
        edgecolor="#1f3a5f",
        color="#5b8cc0",
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], "--", color="#888888", label="perfect calibration")
    ax.plot(
        [b["confidence"] for b in used],
        [b["accuracy"] for b in used],
        "o",
        color="#c0392b",
        ms=4,
        label="mean confidence",
    )
    for b in used:
        ax.text(b["lo"] + width / 2, 0.02, str(b["count"]), ha="center", fontsize=6, rotation=90)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence of the predicted class")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE (15 bins) = {ece:.4f}", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def cpu_cost_ms(backend: Backend, pixels: np.ndarray, repeats: int = 20) -> float:
    """Median wall time (ms) of one fused predict + explanation at batch 1."""
    backend.predict([pixels], explain=True)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        backend.predict([pixels], explain=True)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def card_metrics_text(spec: ModelSpec, metrics: dict[str, Any], folder: ImageFolder, where: str) -> str:
    """One readable line of metrics for the model card."""
    parts = [
        f"On {where} ({len(folder.paths)} images, `python -m inference.evaluate`): "
        f"accuracy {metrics['accuracy']:.3f}, balanced accuracy {metrics['balanced_accuracy']:.3f}",
    ]
    if "sensitivity" in metrics:
        parts.append(
            f"sensitivity ({metrics['positive_class']}) {metrics['sensitivity']:.3f}, "
            f"specificity {metrics['specificity']:.3f} at threshold {metrics['threshold']:.3f}"
        )
    auc = metrics["roc_auc"].get("macro")
    if auc is not None:
        parts.append(f"ROC AUC {auc:.3f}")
    parts.append(f"ECE {metrics['ece']:.3f}")
    recalls = ", ".join(f"{c} {v['recall']:.3f}" for c, v in metrics["per_class"].items())
    parts.append(f"per-class recall: {recalls}")
    return "; ".join(parts) + ". The held-out test set was not used."


def _compact(where: str, n: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers, machine-readable, for the card (metrics.json has the rest)."""
    out: dict[str, Any] = {"data": where, "n": n}
    for key in ("accuracy", "balanced_accuracy", "ece", *BINARY_KEYS):
        if key in metrics:
            out[key] = round(float(metrics[key]), 4)
    auc = metrics["roc_auc"].get("macro")
    out["roc_auc"] = None if auc is None else round(float(auc), 4)
    return out


def evaluate(
    model_id: str,
    data: Path,
    out: Path,
    *,
    registry_path: Path = DEFAULT_REGISTRY,
    model_dir: Path = DEFAULT_MODEL_DIR,
    batch_size: int = 32,
    limit_per_class: int | None = None,
    write_card: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model_id`` on ``data`` and write metrics and plots under ``out``."""
    from inference.manager import ModelManager

    registry = Registry.from_yaml(registry_path)
    spec = registry[model_id]
    folder_root = eval_dir(data)
    folder = list_image_folder(folder_root, spec.class_ids, limit_per_class)
    manager = ModelManager(registry, model_dir, device="cpu")
    backend = manager.get(model_id)
    t0 = time.perf_counter()
    probs = predict_files(backend, folder.paths, batch_size)
    seconds = time.perf_counter() - t0
    metrics = classification_metrics(folder.labels, probs, spec)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = metrics_json(metrics)
    (out / "metrics.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    where = f"{Path(data).name}/{folder_root.name}" if folder_root != Path(data) else Path(data).name
    title = f"{spec.id} v{spec.version} on {where} (n={len(folder.paths)})"
    plot_confusion(np.asarray(metrics["confusion_matrix"]), spec.class_ids, out / "confusion_matrix.png", title)
    from inference.heads import predicted_index

    bins = reliability_bins(folder.labels, probs, predicted_index(probs, spec))
    plot_reliability(bins, metrics["ece"], out / "reliability.png", title)
    log.info(
        "%s on %s: accuracy %.4f, balanced %.4f, ECE %.4f (%d images, %.1f ms/image batched)",
        spec.id,
        where,
        metrics["accuracy"],
        metrics["balanced_accuracy"],
        metrics["ece"],
        len(folder.paths),
        seconds * 1e3 / max(1, len(folder.paths)),
    )
    if write_card:
        from inference.imaging import decode_image
        from inference.specs_io import update_model_entry

        pixels = decode_image(folder.paths[0].read_bytes()).model_pixels(spec.input.keep_alpha)
        cost = cpu_cost_ms(backend, pixels)
        weights = spec.weights_path(Path(model_dir))
        size_mb = weights.stat().st_size / 2**20 if weights is not None and weights.exists() else 0.0
        what = "predict + Grad-CAM" if spec.head is not Head.BINARY_CLASSIFIER else "predict + feature contributions"
        update_model_entry(
            registry_path,
            model_id,
            {
                "card": {
                    "metrics": card_metrics_text(spec, metrics, folder, where),
                    "cost": f"{cost:.0f} ms per image on CPU (fused {what}, batch 1, median of 20); "
                    f"weights file {size_mb:.1f} MB.",
                    "evaluation": _compact(where, len(folder.paths), metrics),
                }
            },
        )
        log.info("wrote the metrics and a CPU cost of %.0f ms/image into the %s card", cost, model_id)
    manager.unload(model_id)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m inference.evaluate``."""
    p = argparse.ArgumentParser(prog="python -m inference.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("model_id")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit-per-class", type=int, default=None)
    p.add_argument("--registry", type=Path, default=DEFAULT_REGISTRY)
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--write-card", action="store_true", help="write metrics and CPU cost into the model's card")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    evaluate(
        a.model_id,
        a.data,
        a.out,
        registry_path=a.registry,
        model_dir=a.model_dir,
        batch_size=a.batch_size,
        limit_per_class=a.limit_per_class,
        write_card=a.write_card,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
