"""Framing an upload for a model: what part of the image the network sees, and back again.

Most models see the whole upload, resized to their square input. A spec may instead ask for
``input.crop: foreground``: the image is cropped to the bounding square of its foreground
(the non-dark region: the head on an MRI slice) before resizing, or ``foreground_box``: to
the foreground's bounding box itself, stretched to the square input (less background, and
the head's aspect ratio is no longer a cue either). On the brain MRI collection
this matters because the head's size and position in the frame correlate with the class, a
shortcut a network learns instead of the anatomy; cropping removes that cue and gives the
brain more of the input's pixels. The crop is part of the model's input contract: training
(``inference.train``), evaluation and the app all go through :func:`frame_image`.

:func:`place_map` maps a map over the model's input (a Grad-CAM heatmap) back onto the whole
upload, zero outside the part the model saw, so the overlay lines up with the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

CropMode = Literal["none", "foreground", "foreground_box"]

# Foreground = brighter than this on 0..255 grey; MRI backgrounds sit near 0, with some noise.
FOREGROUND_THRESHOLD = 20
# Connected bright regions smaller than this share of the largest are specks, text or markers.
MIN_COMPONENT_SHARE = 0.1
# Margin around the foreground box, as a share of its longer side.
MARGIN = 0.03
# The foreground search runs on a copy at most this many pixels on its longer side.
SEARCH_SIDE = 256
# Longer side of the full-frame grid a placed map is drawn on.
PLACED_GRID = 96


@dataclass(frozen=True)
class Framing:
    """The square region of the original image that the model saw, in original pixels.

    The square may reach beyond the image (it is padded with black there); ``x0, y0`` is its
    top-left corner and ``side_x, side_y`` its sides. ``width, height`` are the original image's size.
    Without a crop the "square" is the whole image, stretched to the input (``is_whole``).
    """

    x0: float
    y0: float
    side_x: float
    side_y: float
    width: int
    height: int

    @classmethod
    def whole(cls, width: int, height: int) -> Framing:
        return cls(0.0, 0.0, float(width), float(height), width, height)

    @property
    def is_whole(self) -> bool:
        return self.x0 == 0 and self.y0 == 0 and self.side_x == self.width and self.side_y == self.height


def foreground_box(pixels: np.ndarray, threshold: int = FOREGROUND_THRESHOLD) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` bounding the image's foreground (exclusive ends), or None if none.

    The foreground is the union of the bright connected regions at least
    ``MIN_COMPONENT_SHARE`` of the largest one, found on a downsampled grey copy.
    """
    import cv2  # deferred: only models that crop need it

    h, w = pixels.shape[:2]
    step = max(1, -(-max(h, w) // SEARCH_SIDE))
    small = pixels[::step, ::step]
    grey = small.mean(axis=2) if small.ndim == 3 else small.astype(np.float32)
    mask = (grey > threshold).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return None
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = stats[1:][areas >= MIN_COMPONENT_SHARE * areas.max()]
    x0 = int(keep[:, cv2.CC_STAT_LEFT].min())
    y0 = int(keep[:, cv2.CC_STAT_TOP].min())
    x1 = int((keep[:, cv2.CC_STAT_LEFT] + keep[:, cv2.CC_STAT_WIDTH]).max())
    y1 = int((keep[:, cv2.CC_STAT_TOP] + keep[:, cv2.CC_STAT_HEIGHT]).max())
    return x0 * step, y0 * step, min(w, x1 * step), min(h, y1 * step)


def framing_for(pixels: np.ndarray, crop: CropMode) -> Framing:
    """The region of ``pixels`` the model will see under ``crop``."""
    h, w = pixels.shape[:2]
    if crop == "none":
        return Framing.whole(w, h)
    box = foreground_box(pixels)
    if box is None:
        return Framing.whole(w, h)
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    if crop == "foreground_box":  # the box itself, stretched to the square input
        sx, sy = (x1 - x0) * (1.0 + 2 * MARGIN), (y1 - y0) * (1.0 + 2 * MARGIN)
        return Framing(cx - sx / 2.0, cy - sy / 2.0, sx, sy, w, h)
    side = max(x1 - x0, y1 - y0) * (1.0 + 2 * MARGIN)
    return Framing(cx - side / 2.0, cy - side / 2.0, side, side, w, h)


def frame_image(pixels: np.ndarray, size: int, crop: CropMode = "none") -> tuple[np.ndarray, Framing]:
    """Crop (if asked) and bilinear-resize an RGB uint8 image to ``size x size``."""
    framing = framing_for(pixels, crop)
    img = Image.fromarray(pixels)
    if not framing.is_whole:
        # PIL pads a crop box that reaches beyond the image with black, as the square needs.
        box = (
            round(framing.x0),
            round(framing.y0),
            round(framing.x0 + framing.side_x),
            round(framing.y0 + framing.side_y),
        )
        img = img.crop(box)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8), framing


def place_map(cam: np.ndarray, framing: Framing, grid: int = PLACED_GRID) -> np.ndarray:
    """Put a map over the model's input back on the whole image's frame.

    Returns ``cam`` itself when the model saw the whole image; otherwise a map whose longer
    side is ``grid`` cells, with the image's aspect ratio, holding ``cam`` (bilinear) where
    the model's square lay and zero elsewhere.
    """
    if framing.is_whole:
        return cam
    w, h = framing.width, framing.height
    gw = max(1, round(grid * w / max(w, h)))
    gh = max(1, round(grid * h / max(w, h)))
    sx, sy = gw / w, gh / h
    left, top = framing.x0 * sx, framing.y0 * sy
    pw, ph = max(1, round(framing.side_x * sx)), max(1, round(framing.side_y * sy))
    patch = Image.fromarray(np.asarray(cam, np.float32), mode="F").resize((pw, ph), Image.Resampling.BILINEAR)
    patch_arr = np.asarray(patch, np.float32)
    out = np.zeros((gh, gw), np.float32)
    l0, t0 = round(left), round(top)
    # clip the patch to the frame
    dx0, dy0 = max(0, -l0), max(0, -t0)
    dx1, dy1 = min(pw, gw - l0), min(ph, gh - t0)
    if dx1 > dx0 and dy1 > dy0:
        out[t0 + dy0 : t0 + dy1, l0 + dx0 : l0 + dx1] = patch_arr[dy0:dy1, dx0:dx1]
    return out


def joined_to_border(mask: np.ndarray) -> np.ndarray:
    """The parts of a boolean mask joined to the image's border (4-connected)."""
    import cv2  # deferred: only models that use it need OpenCV

    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, border[border > 0])


def background_mask(pixels: np.ndarray, threshold: int = FOREGROUND_THRESHOLD) -> np.ndarray:
    """Boolean ``(H, W)`` mask of the background: dark pixels joined to the image's border.

    Dark regions enclosed by the foreground (ventricles, a dark lesion) are not background.
    Training uses it to randomise what lies outside the head (``options.background_noise``).
    """
    grey = pixels.max(axis=2) if pixels.ndim == 3 else pixels
    return joined_to_border(grey <= threshold)
