"""The committed starter models: weights present and intact, sane outputs, accuracy floors.

Each model is skipped (with the reason) while its weights are not installed. The accuracy
check needs ``../shared/datasets`` next to the repository and is skipped without it; it uses
a small fixed sample of real val images (the first files per class in name order) and a
floor well under the model's full-val score, so it catches broken weights, wrong label
order or a preprocessing mismatch rather than re-measuring the model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from inference.registry import Head, ModelSpec, Registry, file_sha256

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
MODEL_DIR = REPO / "assets" / "models"
REGISTRY = Registry.from_yaml(REPO / "assets" / "models.yaml")

# model id -> (dataset folder, images per class, metric, floor)
REAL = {
    "brain_tumor": ("brain_mri", 20, "accuracy", 0.90),
    "lung_colon": ("lung_colon", 20, "accuracy", 0.85),
    "chest_xray": ("chest_xray", 20, "balanced_accuracy", 0.80),
    "monkeypox": ("monkeypox", 20, "accuracy", 0.65),
}


def _installed(model_id: str) -> tuple[ModelSpec, Path]:
    spec = REGISTRY[model_id]
    path = spec.weights_path(MODEL_DIR)
    if path is None or not path.exists():
        pytest.skip(
            f"{model_id}: weights not installed yet (assets/models/{spec.weights.file if spec.weights else '?'})"
        )
    return spec, path


@pytest.fixture(scope="module")
def manager() -> object:
    from inference.manager import ModelManager

    return ModelManager(REGISTRY, MODEL_DIR, device="cpu")


@pytest.mark.parametrize("model_id", list(REAL))
def test_weights_match_registry(model_id: str) -> None:
    spec, path = _installed(model_id)
    assert spec.weights is not None
    assert spec.weights.sha256, f"{model_id}: no sha256 in the registry"
    assert file_sha256(path) == spec.weights.sha256
    assert path.stat().st_size <= 20 * 2**20
    assert spec.calibration.fitted_on, f"{model_id}: calibration not fitted"
    assert spec.version != "0.0.0"


@pytest.mark.parametrize("model_id", list(REAL))
def test_sanity_inputs(model_id: str, manager: object) -> None:
    from inference.manager import ModelManager

    assert isinstance(manager, ModelManager)
    spec, _ = _installed(model_id)
    backend = manager.get(model_id)
    rng = np.random.default_rng(0)
    images = [
        np.zeros((224, 224, 3), np.uint8),
        np.full((300, 200, 3), 128, np.uint8),  # not square, not the input size
        rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
    ]
    out = backend.predict(images, explain=True)
    for pred in out.predictions:
        probs = np.array([pred.probabilities[c] for c in spec.class_ids])
        assert list(pred.probabilities) == spec.class_ids
        assert np.isfinite(probs).all()
        assert (probs >= 0).all()
        assert (probs <= 1).all()
        if spec.head is not Head.SIGMOID_MULTI:
            assert probs.sum() == pytest.approx(1.0, abs=1e-5)
        assert pred.label in spec.class_ids
        cam = pred.explanation
        assert cam is not None
        assert pred.explanation_kind == "gradcam"
        assert np.isfinite(cam).all()
        assert cam.min() >= 0
        assert cam.max() <= 1 + 1e-6
        if spec.input.size >= 192:
            assert min(cam.shape) >= 12, f"{model_id}: Grad-CAM map {cam.shape} is coarser than 12x12"
    manager.unload(model_id)


@pytest.mark.real_data
@pytest.mark.parametrize("model_id", list(REAL))
def test_accuracy_on_a_fixed_val_sample(model_id: str, manager: object) -> None:
    from inference.evaluate import predict_files
    from inference.manager import ModelManager
    from inference.metrics import classification_metrics
    from inference.train import list_image_folder

    assert isinstance(manager, ModelManager)
    spec, _ = _installed(model_id)
    folder, per_class, metric, floor = REAL[model_id]
    val = DATASETS / folder / "val"
    if not val.is_dir():
        pytest.skip(f"{val} is not present on this machine (needs ../shared/datasets)")
    sample = list_image_folder(val, spec.class_ids, limit_per_class=per_class)
    probs = predict_files(manager.get(model_id), sample.paths)
    manager.unload(model_id)
    m = classification_metrics(sample.labels, probs, spec)
    assert m[metric] >= floor, f"{model_id}: {metric} {m[metric]:.3f} < {floor} on {len(sample.paths)} val images"
