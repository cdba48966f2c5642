"""Grad-CAM: nested models, automatic layer choice, localisation, scoped hooks, leaks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inference.errors import ModelLoadFailed
from inference.gradcam import FusedExplainer, find_target_layer
from inference.overlay import overlay_heatmap, resize_map
from tests.conftest import TINY, build_flat, build_nested


def explainer(model: Any, **kw: Any) -> FusedExplainer:
    return FusedExplainer(model, input_shape=(TINY, TINY, 3), single_sigmoid=False, **kw)


def test_auto_layer_is_last_4d_map_also_inside_nested_models() -> None:
    assert find_target_layer(build_flat(3, "softmax")).name == "conv2"
    assert find_target_layer(build_nested(3, "softmax")).name == "b_conv2"
    # min_grid skips maps that are too coarse: conv2 is 16x16, conv1 32x32
    assert find_target_layer(build_flat(3, "softmax"), min_grid=20).name == "conv1"
    assert find_target_layer(build_nested(3, "softmax"), name="b_conv1").name == "b_conv1"
    with pytest.raises(ModelLoadFailed, match="not found"):
        find_target_layer(build_flat(3, "softmax"), name="nope")


def test_fused_pass_matches_plain_predict_and_cam_is_normalised() -> None:
    model = build_flat(4, "softmax")
    x = np.random.default_rng(0).random((3, TINY, TINY, 3), dtype=np.float32)
    ex = explainer(model)
    probs, cam = ex.forward_explain(x)
    np.testing.assert_allclose(probs, model.predict(x, verbose=0), atol=1e-5)
    np.testing.assert_allclose(ex.forward(x), probs, atol=1e-6)
    assert cam.shape == (3, 16, 16)
    assert cam.dtype == np.float32
    assert cam.min() >= 0.0
    assert cam.max() <= 1.0
    assert np.isclose(cam.reshape(3, -1).max(axis=1), 1.0).all() or (cam == 0).any()


def test_nested_model_explains_without_graph_disconnected_and_equals_flat() -> None:
    flat, nested = build_flat(3, "softmax", seed=1), build_nested(3, "softmax", seed=2)
    nested.set_weights(flat.get_weights())  # same layers in the same order
    x = np.random.default_rng(1).random((2, TINY, TINY, 3), dtype=np.float32)
    p1, c1 = explainer(flat).forward_explain(x)
    p2, c2 = explainer(nested).forward_explain(x)
    np.testing.assert_allclose(p1, p2, atol=1e-5)
    np.testing.assert_allclose(c1, c2, atol=1e-4)
    assert c2.max() > 0


def test_hook_is_released_after_tracing() -> None:
    model = build_nested(2, "softmax")
    ex = explainer(model)
    ex.warm_up()
    assert "call" not in vars(ex.layer)  # the instance override is gone; the class method is back
    x = np.zeros((1, TINY, TINY, 3), np.float32)
    np.testing.assert_allclose(model(x).numpy(), ex.forward(x), atol=1e-6)


def _patch_dataset(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise images with one 8x8 patch at a random place; the class is the patch's colour
    (red, green or blue), so the patch is the only evidence and the CAM must sit on it."""
    x = rng.random((n, TINY, TINY, 3), dtype=np.float32) * 0.4
    y = rng.integers(0, 3, n)
    boxes = np.zeros((n, 4), int)
    for i, cls in enumerate(y):
        r0, c0 = rng.integers(0, TINY - 8, 2)
        x[i, r0 : r0 + 8, c0 : c0 + 8] = 0.0
        x[i, r0 : r0 + 8, c0 : c0 + 8, cls] = 1.0
        boxes[i] = (r0, c0, r0 + 8, c0 + 8)
    return x, y, boxes


@pytest.mark.parametrize("builder", [build_flat, build_nested], ids=["flat", "nested"])
def test_heatmap_peak_falls_on_the_discriminative_patch(builder: Any) -> None:
    import keras

    rng = np.random.default_rng(42)
    model = builder(3, "softmax", seed=3)
    x, y, _ = _patch_dataset(600, rng)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    xt, yt, boxes = _patch_dataset(40, np.random.default_rng(7))
    probs, cams = explainer(model).forward_explain(xt)
    assert (probs.argmax(1) == yt).mean() >= 0.9
    hits = 0
    for cam, (r0, c0, r1, c1) in zip(cams, boxes, strict=True):
        up = resize_map(cam, (TINY, TINY))
        r, c = np.unravel_index(np.argmax(up), up.shape)
        hits += int(r0 - 2 <= r < r1 + 2 and c0 - 2 <= c < c1 + 2)
    assert hits / len(cams) >= 0.9, f"peak on the patch in only {hits}/{len(cams)} images"


def test_overlay_blends_with_adjustable_opacity() -> None:
    img = np.full((20, 30, 3), 128, np.uint8)
    cam = np.zeros((4, 4), np.float32)
    cam[0, 0] = 1.0
    none = overlay_heatmap(img, cam, opacity=0.0)
    np.testing.assert_array_equal(none, img)
    strong = overlay_heatmap(img, cam, opacity=0.9)
    assert strong.shape == img.shape
    assert strong.dtype == np.uint8
    hot_delta = np.abs(strong[0, 0].astype(int) - 128).sum()
    cold_delta = np.abs(strong[-1, -1].astype(int) - 128).sum()
    assert hot_delta > cold_delta  # the hot corner changes more than the cold one


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


def test_repeated_explanations_do_not_leak() -> None:
    ex = explainer(build_nested(4, "softmax"))
    x = np.random.default_rng(0).random((2, TINY, TINY, 3), dtype=np.float32)
    for _ in range(30):
        ex.forward_explain(x)
    before = _rss_mb()
    for _ in range(100):
        ex.forward_explain(x)
    assert _rss_mb() - before < 30
