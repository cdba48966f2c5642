"""The palm pipeline's HSV colour histogram (the original's features), shared by the XGBoost
family: :mod:`inference.backends.xgboost_palm` serves it, the conjunctiva features reuse its
bins, and the contributions chart names its features. A leaf: numpy and OpenCV only.

The image as BGR, resized to 128x128, converted to HSV (OpenCV ranges: H 0-179, S and V 0-255),
a 3-D ``calcHist`` with 8x8x8 bins over ``[0, 256)`` on every channel (so hue only fills the
lower six of its eight bins), L2-normalised and flattened to 512 values. Feature ``i`` is the
bin ``(h, s, v) = (i // 64, (i // 8) % 8, i % 8)``.
"""

from __future__ import annotations

import numpy as np

N_BINS = 8
N_FEATURES = N_BINS**3
FEATURE_SIZE = 128


def features_from_bgr(bgr: np.ndarray) -> np.ndarray:
    """The 512 L2-normalised HSV histogram features of one BGR ``uint8`` image."""
    import cv2

    img = cv2.resize(bgr, (FEATURE_SIZE, FEATURE_SIZE))
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [N_BINS, N_BINS, N_BINS], [0, 256, 0, 256, 0, 256])
    hist = cv2.normalize(hist, hist)  # default: NORM_L2
    return np.asarray(hist, dtype=np.float32).ravel()


def palm_features(rgb: np.ndarray) -> np.ndarray:
    """Features of one RGB ``uint8`` image (as :func:`inference.imaging.decode_image` gives)."""
    import cv2

    return features_from_bgr(cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2BGR))


def bin_label(index: int) -> str:
    """Human-readable name of feature ``index``: its H, S and V value ranges (OpenCV units)."""
    width = 256 // N_BINS
    h, s, v = index // (N_BINS * N_BINS), (index // N_BINS) % N_BINS, index % N_BINS
    return (
        f"H {h * width}-{h * width + width - 1} · S {s * width}-{s * width + width - 1} · "
        f"V {v * width}-{v * width + width - 1}"
    )
