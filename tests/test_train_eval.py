"""Training, evaluation metrics, calibration and the registry updater.

Metrics are checked against values computed by hand on a fixed prediction set; training runs
end to end for one epoch on a generated 32 px ImageFolder through a test-only registry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from inference.heads import apply_head
from inference.metrics import (
    classification_metrics,
    expected_calibration_error,
    fit_calibration,
    fit_platt,
    fit_temperature,
    nll,
    roc_auc_binary,
    threshold_for_sensitivity,
)
from inference.registry import Head, ModelSpec, Registry, file_sha256

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _spec(head: str, classes: list[str], **extra: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "id": "toy",
            "display_name": "Toy",
            "modality": "test",
            "backend": "keras_image",
            "head": head,
            "classes": [{"id": c, "name": c} for c in classes],
            **extra,
        }
    )


# ----------------------------------------------------------------------------- metrics

# Binary set: labels and P(positive). Confidences were chosen away from the 15 bin edges.
Y_BIN = np.array([0, 0, 0, 1, 1, 1, 1, 1])
P_POS = np.array([0.10, 0.35, 0.62, 0.90, 0.85, 0.30, 0.70, 0.95])


def test_binary_metrics_match_hand_computed_values() -> None:
    spec = _spec("sigmoid_single", ["NORMAL", "PNEUMONIA"], positive_class="PNEUMONIA", threshold=0.5)
    probs = np.stack([1 - P_POS, P_POS], axis=1)
    m = classification_metrics(Y_BIN, probs, spec)
    # predictions at 0.5: [0, 0, 1, 1, 1, 0, 1, 1]
    assert m["confusion_matrix"] == [[2, 1], [1, 4]]
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["sensitivity"] == pytest.approx(4 / 5)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx((4 / 5 + 2 / 3) / 2)
    assert m["threshold"] == 0.5
    assert m["per_class"]["PNEUMONIA"]["precision"] == pytest.approx(4 / 5)
    assert m["per_class"]["NORMAL"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["NORMAL"]["f1"] == pytest.approx(2 / 3)
    # top-class confidences and correctness per bin:
    # (0.600, 0.667]: 0.65 ok, 0.62 wrong -> |0.5 - 0.635| x 2
    # (0.667, 0.733]: 0.70 wrong, 0.70 ok -> |0.5 - 0.70| x 2
    # (0.800, 0.867]: 0.85 ok -> 0.15; (0.867, 0.933]: 0.90 ok x 2 -> 0.10 x 2; (0.933, 1]: 0.95 ok -> 0.05
    expected_ece = (2 * 0.135 + 2 * 0.2 + 0.15 + 2 * 0.1 + 0.05) / 8
    assert m["ece"] == pytest.approx(expected_ece)
    # 13 of the 15 (positive, negative) pairs are ordered correctly
    assert m["roc_auc"]["PNEUMONIA"] == pytest.approx(13 / 15)
    assert m["roc_auc"]["NORMAL"] == pytest.approx(13 / 15)


def test_binary_metrics_use_the_spec_threshold() -> None:
    spec = _spec("sigmoid_single", ["NORMAL", "PNEUMONIA"], positive_class="PNEUMONIA", threshold=0.8)
    m = classification_metrics(Y_BIN, np.stack([1 - P_POS, P_POS], axis=1), spec)
    # at 0.8 only 0.90, 0.85, 0.95 are positive
    assert m["confusion_matrix"] == [[3, 0], [2, 3]]
    assert m["sensitivity"] == pytest.approx(3 / 5)
    assert m["specificity"] == 1.0
    assert m["threshold"] == 0.8


def test_multiclass_metrics_match_hand_computed_values() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [
            [0.7, 0.2, 0.1],  # 0 ok (0.7)
            [0.2, 0.7, 0.1],  # 0 -> 1 wrong (0.7)
            [0.1, 0.8, 0.1],  # 1 ok (0.8)
            [0.1, 0.8, 0.1],  # 1 ok (0.8)
            [0.05, 0.05, 0.9],  # 2 ok (0.9)
            [0.5, 0.1, 0.4],  # 2 -> 0 wrong (0.5)
        ]
    )
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert m["per_class"]["a"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    # bins: 0.5 wrong; 0.7 ok + 0.7 wrong; 0.8 ok x2; 0.9 ok
    assert m["ece"] == pytest.approx((0.5 + 2 * 0.2 + 2 * 0.2 + 0.1) / 6)
    assert "sensitivity" not in m
    assert set(m["roc_auc"]) == {"a", "b", "c", "macro"}


def test_auc_handles_ties_and_single_class() -> None:
    assert roc_auc_binary(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert roc_auc_binary(np.array([1, 1]), np.array([0.2, 0.5])) is None


def test_ece_of_a_perfectly_calibrated_set_is_zero() -> None:
    # in one bin, 3 of 4 right at confidence 0.75
    y = np.array([0, 0, 0, 1])
    probs = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(y, probs) == pytest.approx(0.0)


def test_threshold_for_sensitivity() -> None:
    # positives 0.30 0.70 0.85 0.90 0.95: sensitivity 0.8 needs 4 of them -> between 0.62 and 0.70
    thr = threshold_for_sensitivity(Y_BIN == 1, P_POS, 0.8)
    assert 0.62 < thr <= 0.70
    assert ((thr <= P_POS) & (Y_BIN == 1)).sum() == 4


# ----------------------------------------------------------------------------- calibration


def test_temperature_scaling_reduces_nll_of_an_overconfident_model() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2000, 4)) * 1.5
    true_p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(4, p=p) for p in true_p])
    over = np.exp(3 * logits) / np.exp(3 * logits).sum(axis=1, keepdims=True)  # too sharp by 3x
    t = fit_temperature(y, over)
    assert t == pytest.approx(3.0, rel=0.15)
    cal = fit_calibration(Head.SOFTMAX, y, over)
    assert nll(y, apply_head(over, Head.SOFTMAX, cal)) < nll(y, over) - 0.1
    assert nll(y, apply_head(over, Head.SOFTMAX, cal)) == pytest.approx(nll(y, true_p), abs=0.02)


def test_platt_scaling_reduces_nll_of_a_miscalibrated_sigmoid() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=3000) * 2
    y = (rng.random(3000) < 1 / (1 + np.exp(-z))).astype(int)
    raw = 1 / (1 + np.exp(-(2.5 * z - 1.0)))  # overconfident and shifted
    a, b = fit_platt(y, raw)
    assert a == pytest.approx(1 / 2.5, rel=0.15)
    assert b == pytest.approx(1.0 / 2.5, abs=0.15)
    cal = fit_calibration(Head.SIGMOID_SINGLE, y, raw[:, None])
    before = nll(y, apply_head(raw[:, None], Head.SIGMOID_SINGLE))
    after = nll(y, apply_head(raw[:, None], Head.SIGMOID_SINGLE, cal))
    assert after < before - 0.05
    # sigmoid_multi fits one (a, b) for both outputs
    multi = np.stack([1 - raw, raw], axis=1)
    cal_m = fit_calibration(Head.SIGMOID_MULTI, y, multi)
    assert cal_m.platt_a == pytest.approx(a, rel=0.1)


# ----------------------------------------------------------------------------- registry updater


def test_update_model_entry_changes_only_that_entry(tmp_path: Path) -> None:
    from inference.specs_io import update_model_entry

    src = Path(__file__).resolve().parents[1] / "assets" / "models.yaml"
    path = tmp_path / "models.yaml"
    original = src.read_text(encoding="utf-8")
    # another entry with a comment of its own, which must survive byte for byte
    line = "    display_name: Monkeypox skin lesion"
    original = original.replace(line + "\n", line + "  # keep me\n")
    path.write_text(original, encoding="utf-8")
    before = yaml.safe_load(original)
    spec = update_model_entry(path, "chest_xray", {"threshold": 0.3, "card": {"cost": "12 ms"}, "input": {"size": 192}})
    assert spec.threshold == 0.3
    assert spec.input.size == 192
    text = path.read_text()
    after = yaml.safe_load(text)
    assert text.startswith("# DoctorAI model registry.")
    assert "    display_name: Monkeypox skin lesion  # keep me\n" in text
    old_lines, new_lines = original.splitlines(), text.splitlines()
    start = old_lines.index("  - id: chest_xray")
    assert new_lines[:start] == old_lines[:start]  # everything above the entry is untouched
    for old, new in zip(before["models"], after["models"], strict=True):
        if old["id"] != "chest_xray":
            assert old == new
    xray = next(m for m in after["models"] if m["id"] == "chest_xray")
    assert xray["card"]["cost"] == "12 ms"
    assert xray["card"]["summary"]  # merged, not replaced
    assert xray["input"]["channels"] == 3
    Registry.from_yaml(path)  # still a valid registry
    with pytest.raises(ValueError, match="threshold"):
        update_model_entry(path, "chest_xray", {"threshold": 7.0})
    assert path.read_text() == text  # a bad update never reaches the file
    with pytest.raises(KeyError):
        update_model_entry(path, "nope", {})


# ----------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("kind", ["none", "histopathology", "skin", "mri", "xray"])
def test_augmentations_keep_shape_and_range(kind: str) -> None:
    import tensorflow as tf

    from inference.train import make_augment

    sample_fn, batch_fn = make_augment(kind, 24)
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (24, 24, 3)), tf.float32)
    y = sample_fn(x)
    batch = batch_fn(tf.stack([y, y]))
    assert tuple(batch.shape) == (2, 24, 24, 3)
    arr = np.asarray(batch)
    assert np.isfinite(arr).all()
    assert arr.min() >= -1e-3
    assert arr.max() <= 255.0 + 1e-3


def test_single_pass_affine_moves_content_within_the_mild_mri_range() -> None:
    """The MRI/X-ray affine is one resampling pass: a bright square's centre moves by at most
    the allowed shift plus what rotation and zoom about the image centre can add, it keeps
    (roughly) its area, and the fill outside the image is black."""
    import tensorflow as tf

    from inference.train import make_augment

    size = 64
    _, batch_fn = make_augment("mri", size)
    x = np.zeros((32, size, size, 3), np.float32)
    x[:, 24:40, 24:40] = 255.0  # a 16 px square at the centre
    out = np.asarray(batch_fn(tf.constant(x)))
    centres = []
    for img in out:
        yy, xx = np.nonzero(img[..., 0] > 127)
        centres.append((xx.mean(), yy.mean()))
        area = len(xx)
        assert 256 * (1 - 0.08) ** 2 * 0.85 <= area <= 256 * (1 + 0.08) ** 2 * 1.15
    c = np.asarray(centres) - (size - 1) / 2
    assert np.abs(c).max() <= 0.05 * size + 1.0  # shift only: the square sits at the centre
    assert np.abs(c).std() > 0.3  # and the batch is not all the same transform
    assert out[:, 0, 0].max() == 0.0  # corners stay black (constant fill)


def test_mri_hflip_mirrors_some_images_and_only_left_right() -> None:
    import tensorflow as tf

    from inference.train import make_augment

    x = np.zeros((16, 16, 3), np.float32)
    x[2:6, 1:4] = 200.0  # top-left blob
    sample_fn, _ = make_augment("mri", 16, hflip=True)
    outs = [np.asarray(sample_fn(tf.constant(x))) for _ in range(40)]
    left = sum(o[2:6, 1:4].mean() > o[2:6, 12:15].mean() for o in outs)
    assert 5 < left < 35  # both orientations occur
    assert all(o[10:].max() < 50.0 for o in outs)  # never mirrored top-bottom (contrast lifts the black a little)
    plain, _ = make_augment("mri", 16)
    assert all(np.asarray(plain(tf.constant(x)))[2:6, 1:4].mean() > 0 for _ in range(10))


def test_background_noise_only_touches_the_background() -> None:
    from inference.framing import background_mask
    from inference.registry import ModelSpec
    from inference.train import TrainConfig, _dataset, with_background_mask
    from tests.conftest import _spec

    img = np.zeros((32, 32, 3), np.uint8)
    img[8:24, 8:24] = 150
    img[14:18, 14:18] = 0  # a dark hole inside the "head" is not background
    mask = background_mask(img)
    assert mask[0, 0]
    assert mask[31, 31]
    assert not mask[16, 16]  # enclosed
    assert not mask[10, 10]
    assert mask.sum() == 32 * 32 - 16 * 16

    entry = _spec("bg", "softmax", ["a", "b"], "bg.keras")
    entry["input"]["size"] = 32
    spec = ModelSpec.model_validate({**entry, "options": {"augment": "none", "background_noise": 1.0}})
    images = with_background_mask(np.repeat(img[None], 8, axis=0))
    assert images.shape == (8, 32, 32, 4)
    cfg = TrainConfig(data=Path("."), out=Path("."), batch_size=8)
    ds = _dataset(images, np.zeros(8, np.int32), None, spec, cfg, train=True)
    batch = np.asarray(next(iter(ds))[0]) / spec.input.scale
    assert batch.shape == (8, 32, 32, 3)
    np.testing.assert_allclose(batch[:, ~mask], np.broadcast_to(img[~mask], batch[:, ~mask].shape), atol=1e-3)
    assert batch[:, mask].std() > 0  # the background was replaced by noise
    # without the option (or at evaluation) the fourth channel is dropped and nothing changes
    plain = _dataset(images, np.zeros(8, np.int32), None, spec, cfg, train=False)
    unchanged = np.asarray(next(iter(plain))[0]) / spec.input.scale
    np.testing.assert_allclose(unchanged, np.repeat(img[None], 8, 0), atol=1e-3)


def test_learning_rate_schedule() -> None:
    from inference.train import lr_at

    assert lr_at(0.0, 1e-3, 0.1) == pytest.approx(1e-4)  # warm-up starts at 10 %
    assert lr_at(0.1, 1e-3, 0.1) == pytest.approx(1e-3)  # peak after warm-up
    assert lr_at(0.55, 1e-3, 0.1) == pytest.approx(1e-3 * (0.02 + 0.98 * 0.5))  # half-way down the cosine
    assert lr_at(1.0, 1e-3, 0.1) == pytest.approx(2e-5)  # floor
    assert lr_at(1.5, 1e-3, 0.1) == pytest.approx(2e-5)


# ----------------------------------------------------------------------------- end to end

SIZE = 32
COLOURS = {"NORMAL": (40, 40, 40), "PNEUMONIA": (210, 210, 210)}


def _write_folder(root: Path, per_class: dict[str, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for cls, n in per_class.items():
        d = root / cls
        d.mkdir(parents=True)
        for i in range(n):
            base = np.array(COLOURS[cls], np.float64)
            img = np.clip(base + rng.normal(0, 25, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"img{i:03d}.png")


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    data = tmp_path / "xray_toy"
    _write_folder(data / "train", {"NORMAL": 10, "PNEUMONIA": 22}, seed=0)
    _write_folder(data / "val", {"NORMAL": 6, "PNEUMONIA": 10}, seed=1)
    return data


@pytest.fixture
def toy_registry(tmp_path: Path) -> Path:
    entry = {
        "id": "toy_xray",
        "display_name": "Toy X-ray",
        "modality": "Paediatric chest radiograph",
        "backend": "keras_image",
        "head": "sigmoid_single",
        "positive_class": "PNEUMONIA",
        "classes": [{"id": "NORMAL", "name": "Normal"}, {"id": "PNEUMONIA", "name": "Pneumonia"}],
        "input": {"size": 48, "channels": 3, "scale": 1 / 255, "offset": 0.0},
        "weights": {"file": "toy_xray.keras"},
        "version": "0.0.0",
        "card": {"summary": "test-only"},
        "options": {
            "architecture": "compact_resnet",
            "width": 0.25,
            "train_size": SIZE,
            "balanced_sampling": True,
            "target_sensitivity": 0.9,
        },
    }
    path = tmp_path / "registry.yaml"
    path.write_text("# test registry\n" + yaml.safe_dump({"models": [entry]}, sort_keys=False))
    return path


@pytest.mark.slow
def test_train_install_evaluate_end_to_end(tmp_path: Path, tiny_dataset: Path, toy_registry: Path) -> None:
    from inference import evaluate, train

    model_dir = tmp_path / "models"
    rc = train.main(
        [
            "toy_xray",
            "--data", str(tiny_dataset),
            "--epochs", "1",
            "--batch-size", "8",
            "--out", str(tmp_path / "run"),
            "--install",
            "--registry", str(toy_registry),
            "--model-dir", str(model_dir),
        ]
    )  # fmt: skip
    assert rc == 0
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert len(log["epochs"]) == 1
    assert log["augment"] == "xray"
    assert log["balanced_sampling"] is True
    assert 0 < log["epochs"][0]["lr"] <= 2e-3
    assert log["result"]["val_nll_calibrated"] <= log["result"]["val_nll_uncalibrated"] + 1e-9

    spec = Registry.from_yaml(toy_registry)["toy_xray"]
    weights = model_dir / "toy_xray.keras"
    assert weights.exists()
    assert weights.stat().st_size < 15 * 2**20
    assert spec.weights is not None
    assert spec.weights.sha256 == file_sha256(weights)
    assert spec.input.size == SIZE
    assert spec.version == "1.0.0"
    assert spec.gradcam_layer == "gradcam_features"
    assert spec.calibration.fitted_on == "val (16 images)"
    assert 0.0 <= spec.threshold <= 1.0
    assert spec.card["summary"] == "test-only"
    assert "Platt" in spec.card["calibration"]

    out = tmp_path / "eval"
    assert evaluate.main(
        ["toy_xray", "--data", str(tiny_dataset), "--out", str(out), "--registry", str(toy_registry),
         "--model-dir", str(model_dir), "--write-card"]
    ) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {
        "accuracy", "balanced_accuracy", "ece", "per_class", "confusion_matrix", "roc_auc",
        "sensitivity", "specificity", "threshold",
    }  # fmt: skip
    assert np.asarray(metrics["confusion_matrix"]).sum() == 16  # DIR/val was evaluated
    assert metrics["threshold"] == pytest.approx(spec.threshold)
    for png in ("confusion_matrix.png", "reliability.png"):
        assert Image.open(out / png).size[0] > 100
    card = Registry.from_yaml(toy_registry)["toy_xray"].card
    assert "ms per image" in card["cost"]
    assert card["evaluation"]["n"] == 16

    # a folder of class folders (no train/val) is evaluated as is
    out2 = tmp_path / "eval2"
    evaluate.evaluate("toy_xray", tiny_dataset / "train", out2, registry_path=toy_registry, model_dir=model_dir)
    assert np.asarray(json.loads((out2 / "metrics.json").read_text())["confusion_matrix"]).sum() == 32


def test_evaluate_runs_through_decode_image_and_backend_predict(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """predict_files decodes each file with decode_image and batches it through Backend.predict."""
    from inference import evaluate
    from inference.backends.base import BatchOutput, Prediction

    calls: list[int] = []

    class FakeBackend:
        spec = _spec("softmax", ["a", "b"])

        def predict(self, images: list[np.ndarray], explain: bool = True) -> BatchOutput:
            assert not explain
            assert all(im.dtype == np.uint8 and im.shape[2] == 3 for im in images)
            calls.append(len(images))
            return BatchOutput([Prediction("a", {"b": 0.25, "a": 0.75}) for _ in images], {})

    for i in range(5):
        Image.fromarray(np.full((8, 8), i * 40, np.uint8)).save(tmp_path / f"{i}.png")  # grayscale on disk
    probs = evaluate.predict_files(FakeBackend(), sorted(tmp_path.glob("*.png")), batch_size=2)  # type: ignore[arg-type]
    assert calls == [2, 2, 1]
    assert probs.tolist() == [[0.75, 0.25]] * 5  # in the spec's class order


def test_densenet_backbone_weights_come_from_a_local_file_only(tmp_path: Path, toy_registry: Path) -> None:
    import keras

    from inference.architectures import build_model
    from inference.train import parse_args

    base = keras.applications.DenseNet201(include_top=False, weights=None, input_shape=(32, 32, 3))
    saved = tmp_path / "densenet201_notop.weights.h5"
    base.save_weights(saved)
    toy = Registry.from_yaml(toy_registry)["toy_xray"]
    spec = toy.model_copy(update={"options": {"architecture": "densenet201_cut", "backbone_weights": str(saved)}})

    model = build_model(spec, size=32)

    conv = next(layer for layer in base.layers if layer.get_weights())
    np.testing.assert_array_equal(model.get_layer(conv.name).get_weights()[0], conv.get_weights()[0])
    missing = spec.model_copy(update={"options": {**spec.options, "backbone_weights": str(tmp_path / "nope.h5")}})
    with pytest.raises(ValueError, match="is not a file"):
        build_model(missing, size=32)
    with pytest.raises(ValueError, match="backbone weights apply to"):
        build_model(spec, "compact_resnet", 32)
    _, cfg, _ = parse_args(["monkeypox", "--data", "d", "--backbone-weights", str(saved)])
    assert cfg.backbone_weights == saved


@pytest.mark.slow
def test_patient_grouped_cross_validation(tmp_path: Path, toy_registry: Path) -> None:
    from inference import train

    rng = np.random.default_rng(2)
    n_originals = 0
    for split, patients in (("train", range(1, 9)), ("val", range(9, 11))):
        for p in patients:
            cls = "NORMAL" if p % 2 else "PNEUMONIA"
            d = tmp_path / "cv_data" / split / cls
            d.mkdir(parents=True, exist_ok=True)
            img = np.clip(np.array(COLOURS[cls]) + rng.normal(0, 25, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"P{p:02d}_01.png")
            n_originals += 1
            if split == "train":  # augmented copies travel with their patient and are never scored
                for a in range(3):
                    Image.fromarray(np.rot90(img, a + 1).copy()).save(d / f"P{p:02d}_01_{a:02d}.png")
    reg = yaml.safe_load(toy_registry.read_text())
    reg["models"][0]["options"].update({"group_pattern": r"^(P\d+)_", "balanced_sampling": False})
    toy_registry.write_text(yaml.safe_dump(reg, sort_keys=False))
    args = ["toy_xray", "--data", str(tmp_path / "cv_data"), "--cv", "2", "--epochs", "1", "--batch-size", "8"]
    assert train.main([*args, "--out", str(tmp_path / "cv"), "--install", "--registry", str(toy_registry)]) == 0
    cv = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert len(cv["folds"]) == 2
    assert cv["patients"] == 10
    assert sum(f["n_test"] for f in cv["folds"]) == n_originals  # every original scored exactly once
    assert 0.0 <= cv["mean_accuracy"] <= 1.0
    assert "2-fold patient-grouped CV" in Registry.from_yaml(toy_registry)["toy_xray"].card["cv"]


def test_mixed_precision_trains_in_bfloat16_and_returns_a_float32_model(tmp_path: Path, toy_registry: Path) -> None:
    import keras

    from inference.train import TrainConfig, fit_keras, training_precision

    toy = Registry.from_yaml(toy_registry)["toy_xray"]
    spec = toy.model_copy(update={"options": {**toy.options, "mixed_precision": "bfloat16", "bn_images": 16}})
    rng = np.random.default_rng(3)
    labels = np.array([0, 1] * 8)
    noise = rng.integers(0, 30, (16, SIZE, SIZE, 3))
    x = (np.where(labels[:, None, None, None] == 1, 200, 50) + noise).astype(np.uint8)
    cfg = TrainConfig(data=tmp_path, out=tmp_path / "run", epochs=1, batch_size=8)

    final, json_log, _ = fit_keras(spec, cfg, "compact_resnet", x, labels, x, labels)

    assert json_log.data["dtype_policy"] == "mixed_bfloat16"  # the trained copy computed in bfloat16
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    assert final.dtype_policy.name == "float32"  # what is saved and served computes in float32
    assert {layer.compute_dtype for layer in final.layers} == {"float32"}
    assert all(w.dtype == np.float32 for w in final.get_weights())
    out = np.asarray(final(x[:2].astype(np.float32) / 255.0))
    assert out.dtype == np.float32
    assert np.all((out >= 0) & (out <= 1))
    with pytest.raises(ValueError, match="mixed_precision must be one of"), training_precision("float16"):
        pass
    assert keras.config.dtype_policy().name == "float32"
