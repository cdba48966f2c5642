"""The model's framing of an upload (``input.crop``): what is cropped, and how heatmaps go back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.backends.keras_image import KerasImageBackend
from inference.framing import Framing, foreground_box, frame_image, framing_for, place_map
from inference.registry import ModelSpec
from inference.train import load_pixels
from tests.conftest import TINY, _spec, build_flat


def head_image(
    w: int = 300, h: int = 200, centre: tuple[int, int] = (220, 120), radii: tuple[int, int] = (50, 40)
) -> np.ndarray:
    """A dark frame with one bright ellipse ("head") in it, plus faint noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((xx - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 <= 1.0
    grey = rng.integers(0, 12, (h, w)).astype(np.uint8)
    grey[inside] = 160 + rng.integers(0, 60, int(inside.sum())).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def test_foreground_box_bounds_the_head_and_ignores_specks() -> None:
    img = head_image()
    img[5:8, 5:8] = 255  # a marker speck in the corner
    x0, y0, x1, y1 = foreground_box(img)  # type: ignore[misc]
    assert abs(x0 - 170) <= 3
    assert abs(x1 - 271) <= 3
    assert abs(y0 - 80) <= 3
    assert abs(y1 - 161) <= 3


def test_no_foreground_means_the_whole_image() -> None:
    black = np.zeros((64, 80, 3), np.uint8)
    assert foreground_box(black) is None
    assert framing_for(black, "foreground").is_whole


def test_crop_none_is_the_plain_resize_the_models_were_trained_on() -> None:
    img = head_image()
    framed, framing = frame_image(img, 48, "none")
    assert framing.is_whole
    expected = np.asarray(Image.fromarray(img).resize((48, 48), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(framed, expected)


def test_foreground_crop_is_a_centred_square_with_margin() -> None:
    img = head_image()
    framed, framing = frame_image(img, 64, "foreground")
    assert framed.shape == (64, 64, 3)
    assert framing.side_x == framing.side_y
    # longer side of the 101 x 81 box, plus 3 % margin each way
    assert framing.side_x == pytest.approx(101 * 1.06, abs=4)
    assert framing.x0 + framing.side_x / 2 == pytest.approx(220, abs=2)
    assert framing.y0 + framing.side_y / 2 == pytest.approx(120, abs=2)
    # the head now fills the input: its centre is bright, its corners dark
    assert framed[32, 32].mean() > 120
    assert framed[1, 1].mean() < 20


def test_crop_past_the_edge_pads_with_black() -> None:
    img = head_image(centre=(280, 100), radii=(40, 40))  # head cut by the right edge
    framed, framing = frame_image(img, 64, "foreground")
    assert framing.x0 + framing.side_x > img.shape[1]
    assert framed[:, -2:].max() == 0


def test_place_map_puts_the_heat_where_the_model_looked() -> None:
    framing = Framing(x0=150.0, y0=50.0, side_x=100.0, side_y=100.0, width=300, height=200)
    placed = place_map(np.ones((12, 12), np.float32), framing, grid=96)
    assert placed.shape == (64, 96)  # the image's aspect ratio, longer side 96
    ys, xs = np.nonzero(placed)
    # 96 / 300 = 0.32 grid cells per pixel: x 48..80, y 16..48
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (48, 80, 16, 48)
    np.testing.assert_allclose(placed[ys, xs], 1.0)


def test_place_map_clips_a_square_beyond_the_frame() -> None:
    framing = Framing(x0=250.0, y0=-50.0, side_x=100.0, side_y=100.0, width=300, height=200)
    placed = place_map(np.ones((12, 12), np.float32), framing, grid=96)
    ys, xs = np.nonzero(placed)
    assert xs.max() == 95
    assert ys.min() == 0
    assert ys.max() + 1 == 16


def test_whole_framing_leaves_the_map_alone() -> None:
    cam = np.random.default_rng(1).random((12, 12)).astype(np.float32)
    assert place_map(cam, Framing.whole(300, 200)) is cam


@pytest.fixture
def cropping_backend() -> KerasImageBackend:
    spec = ModelSpec.model_validate(
        _spec("tumor", "softmax", ["glioma", "meningioma", "notumor", "pituitary"], "x.keras")
        | {"input": {"size": TINY, "channels": 3, "scale": 1 / 255, "offset": 0.0, "crop": "foreground"}}
    )
    return KerasImageBackend(spec, build_flat(4, "softmax"), "cpu")


def test_backend_heatmap_is_zero_outside_what_the_model_saw(cropping_backend: KerasImageBackend) -> None:
    img = head_image()
    out = cropping_backend.predict([img], explain=True)
    heat = out.predictions[0].explanation
    assert heat is not None
    assert heat.shape == (64, 96)
    framing = framing_for(img, "foreground")
    s = 96 / 300
    x0, x1 = framing.x0 * s, (framing.x0 + framing.side_x) * s
    y0, y1 = framing.y0 * s, (framing.y0 + framing.side_y) * s
    ys, xs = np.nonzero(heat)
    assert xs.min() >= int(x0)
    assert xs.max() <= int(x1) + 1
    assert ys.min() >= int(y0)
    assert ys.max() <= int(y1) + 1
    assert heat[:, : int(x0) - 1].sum() == 0  # the left half of the frame is background


def test_backend_scores_the_crop_not_the_frame(cropping_backend: KerasImageBackend) -> None:
    img = head_image()
    framed, _ = frame_image(img, TINY, "foreground")
    direct = cropping_backend.explainer.forward(cropping_backend.normalise(framed[None]))
    via_predict = cropping_backend.predict([img], explain=False).predictions[0].probabilities
    np.testing.assert_allclose(list(via_predict.values()), np.asarray(direct)[0], atol=1e-6)


def test_training_sees_exactly_what_the_app_sees(tmp_path: Path, cropping_backend: KerasImageBackend) -> None:
    path = tmp_path / "head.png"
    img = head_image()
    Image.fromarray(img).save(path)
    framed, _ = cropping_backend.frame([img])
    np.testing.assert_array_equal(load_pixels(path, TINY, "foreground"), framed[0])


def test_foreground_box_crop_stretches_the_box_itself() -> None:
    img = head_image()  # head box 101 x 81 px around (220, 120)
    framed, framing = frame_image(img, 64, "foreground_box")
    assert framing.side_x == pytest.approx(101 * 1.06, abs=4)
    assert framing.side_y == pytest.approx(81 * 1.06, abs=4)
    # the ellipse now touches (nearly) all four sides of the input: less background than the square
    assert framed[32, 2].mean() > 100
    assert framed[2, 32].mean() > 100
    assert framed[1, 1].mean() < 20
    square, _ = frame_image(img, 64, "foreground")
    assert (framed.mean(axis=2) > 100).mean() > (square.mean(axis=2) > 100).mean()


def test_place_map_undoes_the_stretch() -> None:
    framing = Framing(x0=150.0, y0=50.0, side_x=150.0, side_y=75.0, width=300, height=200)
    placed = place_map(np.ones((12, 12), np.float32), framing, grid=96)
    ys, xs = np.nonzero(placed)
    # 0.32 cells per pixel: x 48..96, y 16..40
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (48, 96, 16, 40)
