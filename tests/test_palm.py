"""The palm anaemia backend: exact features, native-format loading, training, explanations.

No palm photographs exist here: the images are generated (reddish palms = not anaemic, pale
palms = anaemic) and the model is trained on them in a second.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from inference.backends.hsv_histogram import N_FEATURES, bin_label, features_from_bgr, palm_features
from inference.backends.xgboost_palm import MARGIN_CLASS_ATTR, XGBoostPalmBackend, load_booster, main
from inference.errors import ModelLoadFailed
from inference.explain import render_explanation
from inference.manager import ModelManager, default_loaders
from inference.registry import Registry

REPO = Path(__file__).resolve().parents[1]


def _palm(rng: np.random.Generator, anaemic: bool, size: int = 96) -> np.ndarray:
    """An RGB 'palm': pale pink when anaemic, saturated red-brown when not, plus texture."""
    base = np.array([235, 205, 195] if anaemic else [190, 80, 70], np.float64)
    base += rng.normal(0, 10, 3)
    img = base + rng.normal(0, 12, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _write(root: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for cls, anaemic in (("AnemicP", True), ("Non-AnemicP", False)):
        d = root / cls
        d.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(_palm(rng, anaemic)).save(d / f"{cls}_{i:03d}.jpg", quality=92)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(registry, model_dir) with a palm model trained on generated images and installed."""
    from inference import train

    tmp = tmp_path_factory.mktemp("palm")
    data = tmp / "palm_data"
    _write(data / "train", 30, seed=0)
    _write(data / "val", 12, seed=1)
    real = yaml.safe_load((REPO / "assets" / "models.yaml").read_text())
    palm = next(m for m in real["models"] if m["id"] == "palm")
    registry = tmp / "models.yaml"
    registry.write_text("# test\n" + yaml.safe_dump({"models": [palm]}, sort_keys=False))
    model_dir = tmp / "models"
    args = ["palm", "--data", str(data), "--out", str(tmp / "run"), "--install", "--registry", str(registry)]
    assert train.main([*args, "--model-dir", str(model_dir)]) == 0
    return registry, model_dir


# ----------------------------------------------------------------------------- features


def test_features_are_512_l2_normalised_and_match_opencv_reference() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (200, 150, 3), dtype=np.uint8)
    f = palm_features(rgb)
    assert f.shape == (N_FEATURES,) == (512,)
    assert f.dtype == np.float32
    assert np.linalg.norm(f) == pytest.approx(1.0, abs=1e-5)
    # the reference recipe, written out: BGR -> 128x128 -> HSV -> calcHist -> L2 -> flatten
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    hsv = cv2.cvtColor(cv2.resize(bgr, (128, 128)), cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [8, 8, 8], [0, 256, 0, 256, 0, 256])
    ref = (hist / np.linalg.norm(hist)).ravel()
    np.testing.assert_allclose(f, ref, atol=1e-6)
    np.testing.assert_allclose(features_from_bgr(bgr), f)


def test_hue_only_fills_the_lower_bins() -> None:
    # OpenCV hue is 0..179, binned over [0, 256) in 8 bins of 32: bins 6 and 7 stay empty.
    rng = np.random.default_rng(1)
    for _ in range(5):
        f = palm_features(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).reshape(8, 8, 8)
        assert f[6:].sum() == 0.0
        assert f[:6].sum() > 0
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 255  # pure red: H 0, S 255, V 255 -> bin (0, 7, 7)
    f = palm_features(red)
    assert int(np.argmax(f)) == 0 * 64 + 7 * 8 + 7
    assert f.max() == pytest.approx(1.0)
    assert bin_label(63) == "H 0-31 · S 224-255 · V 224-255"


# ----------------------------------------------------------------------------- training and prediction


def test_train_predict_and_contributions(trained: tuple[Path, Path]) -> None:
    registry_path, model_dir = trained
    registry = Registry.from_yaml(registry_path)
    spec = registry["palm"]
    assert spec.weights is not None
    assert spec.weights.sha256
    assert (model_dir / "palm.ubj").exists()
    assert spec.calibration.fitted_on == "val (24 images)"
    assert "xgboost_palm" in default_loaders()
    manager = ModelManager(registry, model_dir, device="cpu")  # the app's loader, sha256 checked
    backend = manager.get("palm")
    assert isinstance(backend, XGBoostPalmBackend)
    rng = np.random.default_rng(7)
    images = [_palm(rng, anaemic=True), _palm(rng, anaemic=False)]
    out = backend.predict(images, explain=True)
    pale, red = out.predictions
    assert pale.label == "AnemicP"
    assert red.label == "Non-AnemicP"
    assert list(pale.probabilities) == ["Non-AnemicP", "AnemicP"]
    assert pale.probabilities["AnemicP"] > 0.5 > red.probabilities["AnemicP"]
    assert sum(pale.probabilities.values()) == pytest.approx(1.0)
    margins = backend.margins(backend.preprocess(images))
    for pred, margin in zip(out.predictions, margins, strict=True):
        assert pred.explanation_kind == "feature_contributions"
        assert pred.explanation is not None
        assert pred.explanation.shape == (N_FEATURES,)
        assert float(pred.explanation.sum()) + pred.extra["bias"] == pytest.approx(float(margin), abs=1e-4)
        assert pred.extra["margin"] == pytest.approx(float(margin), abs=1e-4)
    chart = backend.explain(images[0], pale, opacity=0.5, colormap="jet")
    assert chart.dtype == np.uint8
    assert chart.ndim == 3
    assert chart.shape[2] == 3
    assert chart.shape[0] > 100
    assert chart.std() > 0  # something was drawn
    np.testing.assert_array_equal(chart, render_explanation(images[0], pale, opacity=0.5, colormap="jet"))


# ----------------------------------------------------------------------------- pickles


def test_pickle_is_refused_without_trust_pickle(trained: tuple[Path, Path], tmp_path: Path) -> None:
    registry_path, model_dir = trained
    booster = load_booster(model_dir / "palm.ubj")
    pkl = tmp_path / "palm.pkl"
    pkl.write_bytes(pickle.dumps(booster))
    with pytest.raises(ModelLoadFailed, match="--trust-pickle"):
        load_booster(pkl)
    with pytest.raises(ModelLoadFailed, match=r"\.json or \.ubj"):
        load_booster(tmp_path / "palm.bin")
    out = tmp_path / "converted.ubj"
    assert main(["convert", str(pkl), str(out)]) == 2
    assert not out.exists()
    assert main(["convert", "--trust-pickle", str(pkl), str(out)]) == 0
    converted = load_booster(out)
    assert converted.attr(MARGIN_CLASS_ATTR) == "AnemicP"
    spec = Registry.from_yaml(registry_path)["palm"]
    x = XGBoostPalmBackend(spec, booster).preprocess([_palm(np.random.default_rng(3), True)])
    np.testing.assert_allclose(
        XGBoostPalmBackend(spec, converted).margins(x), XGBoostPalmBackend(spec, booster).margins(x)
    )
    # a model whose label 1 meant Non-AnemicP (directory-order bug) is flipped, not mislabelled
    flipped = tmp_path / "flipped.ubj"
    assert main(["convert", "--trust-pickle", str(pkl), str(flipped), "--margin-class", "Non-AnemicP"]) == 0
    np.testing.assert_allclose(
        XGBoostPalmBackend(spec, load_booster(flipped)).margins(x), -XGBoostPalmBackend(spec, booster).margins(x)
    )


def test_booster_with_wrong_feature_count_is_refused(trained: tuple[Path, Path]) -> None:
    import xgboost as xgb

    spec = Registry.from_yaml(trained[0])["palm"]
    rng = np.random.default_rng(0)
    small = xgb.train(
        {"objective": "binary:logistic"}, xgb.DMatrix(rng.random((20, 10)), label=rng.integers(0, 2, 20)), 2
    )
    with pytest.raises(ModelLoadFailed, match="512"):
        XGBoostPalmBackend(spec, small)
