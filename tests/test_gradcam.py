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


def _evidence_model() -> Any:
    """A hand-set model whose only evidence for class 0 is red and for class 1 is green.

    A 1x1 conv copies the red and green channels into two feature maps (``feat``), then
    GAP and a dense layer score class 0 as red - green and class 1 as green - red. The
    Grad-CAM of the winning class is therefore known in closed form: positive exactly on
    the pixels of its colour, zero everywhere else (background and counter-evidence)."""
    import keras

    inp = keras.Input((TINY, TINY, 3), name="image")
    feat = keras.layers.Conv2D(2, 1, use_bias=False, activation="relu", name="feat")(inp)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(feat)
    out = keras.layers.Dense(2, activation="softmax", name="head")(x)
    model = keras.Model(inp, out)
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[0, 0, 0, 0] = kernel[0, 0, 1, 1] = 1.0
    model.get_layer("feat").set_weights([kernel])
    model.get_layer("head").set_weights([np.array([[8.0, -8.0], [-8.0, 8.0]], np.float32), np.zeros(2, np.float32)])
    return model


def test_cam_is_zero_where_class_evidence_is_absent_and_has_no_floor() -> None:
    x = np.zeros((2, TINY, TINY, 3), np.float32)
    x[0, 4:12, 4:12, 0] = 1.0  # image 0: strong red (class 0), weak green elsewhere
    x[0, 20:24, 20:24, 1] = 0.5
    x[1, 16:28, 2:10, 1] = 1.0  # image 1: green only (class 1)
    probs, cams = explainer(_evidence_model()).forward_explain(x)
    assert probs.argmax(1).tolist() == [0, 1]
    red = np.zeros((TINY, TINY), bool)
    red[4:12, 4:12] = True
    green = np.zeros((TINY, TINY), bool)
    green[16:28, 2:10] = True
    # Standard Grad-CAM: ReLU(sum_k w_k A_k) divided by its peak. No offset anywhere: the
    # background and the counter-evidence (image 0's green patch) are exactly zero.
    np.testing.assert_allclose(cams[0][red], 1.0, atol=1e-5)
    assert (cams[0][~red] == 0).all()
    np.testing.assert_allclose(cams[1][green], 1.0, atol=1e-5)
    assert (cams[1][~green] == 0).all()
    # Batch-safe: each image gets the map of its own predicted class, as if run alone.
    for i in range(2):
        _, alone = explainer(_evidence_model()).forward_explain(x[i : i + 1])
        np.testing.assert_allclose(alone[0], cams[i], atol=1e-6)


def test_a_saturated_prediction_still_gets_its_map() -> None:
    """A confident model whose probability rounds to 1.0 in float32 (logit margin ~ 200)
    still gets its heatmap: the log-odds come from the logits, not from the clipped
    probability (whose gradient is zero there, which used to leave the map empty)."""
    model = _evidence_model()
    head = model.get_layer("head")
    head.set_weights([w * 50.0 for w in head.get_weights()])
    x = np.zeros((1, TINY, TINY, 3), np.float32)
    x[0, 4:12, 4:12, 0] = 1.0
    probs, cams = explainer(model).forward_explain(x)
    assert probs[0, 0] == 1.0  # saturated in float32
    red = np.zeros((TINY, TINY), bool)
    red[4:12, 4:12] = True
    np.testing.assert_allclose(cams[0][red], 1.0, atol=1e-5)
    assert (cams[0][~red] == 0).all()
    # the compiled forward still applies the softmax: the swap to logits is scoped to the trace
    np.testing.assert_allclose(explainer(model).forward(x), probs, atol=1e-6)
    assert head.activation.__name__ == "softmax"


def test_logit_log_odds_match_probability_log_odds() -> None:
    import tensorflow as tf

    from inference.gradcam import _log_odds, _logit_log_odds

    z = tf.constant([[1.0, -0.5, 2.0], [0.3, 0.2, -1.0]])
    from_probs = _log_odds(tf.nn.softmax(z)).numpy()
    np.testing.assert_allclose(_logit_log_odds(z, "softmax").numpy(), from_probs, atol=1e-5)
    np.testing.assert_allclose(_logit_log_odds(z, "sigmoid").numpy(), _log_odds(tf.sigmoid(z)).numpy(), atol=1e-5)


def test_upsampling_is_centred_and_does_not_spread_beyond_a_cell() -> None:
    # The overlay (and the mass bench) upsample with half-pixel centres: a single hot cell
    # of a 12x12 map lands centred on its own 16x16 block of a 192 px image, and the
    # bilinear tent reaches no further than the neighbouring cell centres.
    cam = np.zeros((12, 12), np.float32)
    cam[3, 8] = 1.0
    up = resize_map(cam, (192, 192))
    rows, cols = np.mgrid[0:192, 0:192] + 0.5
    centre = ((up * rows).sum() / up.sum(), (up * cols).sum() / up.sum())
    np.testing.assert_allclose(centre, (3.5 * 16, 8.5 * 16), atol=0.5)
    near = (np.abs(rows - 3.5 * 16) < 16) & (np.abs(cols - 8.5 * 16) < 16)
    assert (up[~near] == 0).all()


def test_mass_bench_head_mask_keeps_scalp_and_skull() -> None:
    from bench.bench_gradcam_mass import head_mask, inside_fraction

    # Synthetic axial slice: bright brain disk, dark skull gap, thin bright scalp ring,
    # black background. The head is everything up to the scalp's outer edge.
    rr, cc = np.mgrid[0:128, 0:128]
    r = np.hypot(rr - 64, cc - 60)
    gray = np.zeros((128, 128), np.float32)
    gray[r < 34] = 120
    gray[(r >= 38) & (r < 42)] = 200
    gray[(r < 6)] = 0  # a dark ventricle inside the brain
    mask = head_mask(np.repeat(gray[..., None], 3, axis=2).astype(np.uint8))
    assert mask[r < 41].all()
    assert not mask[r > 45].any()
    heat = (r < 20).astype(np.float32) + 0.1 * (r > 50)
    frac = inside_fraction(heat, mask)
    assert frac is not None
    assert 0.5 < frac < 1.0
    assert inside_fraction(np.zeros_like(heat), mask) is None
