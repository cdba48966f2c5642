"""Colour features of a segmented conjunctiva photograph, computed over its tissue mask only.

The conjunctiva model (``inference.backends.xgboost_conjunctiva``) sees an RGBA crop of the
lower eyelid's palpebral conjunctiva: the tissue is opaque, everything else transparent. Every
feature here is a statistic of the pixels inside the *mask* (alpha >= :data:`ALPHA_MIN`), so a
transparent pixel never enters a feature, whatever colour it carries. Two families:

* ``hsv``: the palm model's HSV 8x8x8 histogram (OpenCV ranges, 512 bins over ``[0, 256)``,
  L2-normalised), taken over the masked pixels instead of the whole frame;
* ``colour``: pallor features from the anaemia literature: CIELAB L*/a*/b* (a* is the
  red-green axis, lower in pale tissue), the erythema index ``100 * log10(R / G)``,
  chromaticity (R, G, B over their sum), redness ``R / (G + B)``, HSV saturation and value, the
  share of pixels whose hue is red ("high hue ratio"), as means, standard deviations and
  percentiles over the mask; plus pallor ratios (a*/L*, chroma, the redness of the reddest
  tenth of the tissue against its median).

Images are reduced with nearest-neighbour sampling only (never interpolation), so no pixel
value is ever a blend of tissue and background.

An upload without alpha (a plain photograph) has no mask; :func:`tissue_mask` then takes the
non-background region (everything but dark pixels joined to the border, e.g. a crop saved over
black) and, when that finds nothing sensible, the whole frame. The caller reports which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from inference.backends.hsv_histogram import N_BINS, N_FEATURES, bin_label

ALPHA_MIN = 128  # alpha at or above this is tissue; the dataset's soft edges hold 1-2% of pixels
MAX_SIDE = 256  # masks are sampled down to this (nearest neighbour) before the statistics
MIN_TISSUE_PIXELS = 50  # fewer masked pixels than this cannot give stable statistics
N_HSV = N_FEATURES  # the palm histogram's 8x8x8 bins, over the mask
PERCENTILES = (10, 25, 50, 75, 90)
_EPS = 1.0

MaskSource = Literal["alpha", "foreground", "whole_image"]


@dataclass(frozen=True)
class Tissue:
    """The tissue pixels of one image: ``rgb`` is ``(N, 3) uint8``; ``source`` how they were found."""

    rgb: np.ndarray
    source: MaskSource
    fraction: float  # masked share of the (sampled) frame


# --------------------------------------------------------------------------- masks


def _sample(arr: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """Every k-th row and column so the longer side is at most ``max_side`` (no blending)."""
    step = max(1, int(np.ceil(max(arr.shape[:2]) / max_side)))
    return arr[::step, ::step]


def tissue_mask(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, MaskSource]:
    """``(rgb, mask, source)`` of an ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA ``uint8`` image.

    With alpha, ``rgb`` is un-premultiplied (the decoder composites over black) and the mask is
    ``alpha >= ALPHA_MIN``. Without, the mask is the non-background region: not a dark area
    joined to the border; if that leaves too little or almost everything dark, the whole frame.
    """
    from inference.framing import background_mask

    arr = _sample(np.asarray(pixels))
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3|4) image, got shape {arr.shape}")
    if arr.shape[2] == 4:
        alpha = arr[..., 3]
        mask = alpha >= ALPHA_MIN
        a = np.maximum(alpha.astype(np.float32), 1.0)[..., None]
        # exact for opaque pixels, within one grey level for the soft edge that passes the mask
        rgb = np.clip(np.rint(arr[..., :3].astype(np.float32) * 255.0 / a), 0, 255).astype(np.uint8)
        return rgb, mask, "alpha"
    rgb = np.ascontiguousarray(arr, dtype=np.uint8)
    mask = ~background_mask(rgb)
    if int(mask.sum()) >= MIN_TISSUE_PIXELS and mask.mean() < 0.999:
        return rgb, mask, "foreground"
    return rgb, np.ones(rgb.shape[:2], bool), "whole_image"


def tissue(pixels: np.ndarray) -> Tissue:
    """The masked tissue pixels of one image (see :func:`tissue_mask`)."""
    rgb, mask, source = tissue_mask(pixels)
    if int(mask.sum()) < MIN_TISSUE_PIXELS:
        # a fully transparent (or nearly) crop: fall back to the whole frame rather than
        # compute statistics over a handful of pixels; the caller reports the source
        rgb_all, mask_all = rgb, np.ones(rgb.shape[:2], bool)
        return Tissue(rgb_all[mask_all], "whole_image", 1.0)
    return Tissue(rgb[mask], source, float(mask.mean()))


# --------------------------------------------------------------------------- features


def hsv_histogram(rgb: np.ndarray) -> np.ndarray:
    """The palm model's 512-bin HSV histogram of ``(N, 3)`` RGB pixels, L2-normalised."""
    import cv2

    hsv = cv2.cvtColor(rgb.reshape(-1, 1, 3), cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(np.int64)
    width = 256 // N_BINS
    idx = (hsv[:, 0] // width) * N_BINS * N_BINS + (hsv[:, 1] // width) * N_BINS + hsv[:, 2] // width
    hist = np.bincount(idx, minlength=N_HSV).astype(np.float64)
    norm = np.linalg.norm(hist)
    return (hist / norm if norm > 0 else hist).astype(np.float32)


def _channels(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pixel colour measures of ``(N, 3)`` RGB pixels, by readable name."""
    import cv2

    px = rgb.reshape(-1, 1, 3)
    lab = cv2.cvtColor(px.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab).reshape(-1, 3)
    hsv = cv2.cvtColor(px, cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(np.float64)
    r, g, b = (rgb[:, i].astype(np.float64) for i in range(3))
    total = r + g + b + _EPS
    return {
        "CIELAB L* (lightness)": lab[:, 0].astype(np.float64),
        "CIELAB a* (red-green)": lab[:, 1].astype(np.float64),
        "CIELAB b* (yellow-blue)": lab[:, 2].astype(np.float64),
        "erythema index 100·log10(R/G)": 100.0 * np.log10((r + _EPS) / (g + _EPS)),
        "red chromaticity R/(R+G+B)": r / total,
        "green chromaticity G/(R+G+B)": g / total,
        "blue chromaticity B/(R+G+B)": b / total,
        "redness R/(G+B)": r / (g + b + _EPS),
        "HSV saturation": hsv[:, 1] / 255.0,
        "HSV value": hsv[:, 2] / 255.0,
        # hue is circular with red at both ends (OpenCV: 0-179); shift so red is contiguous
        "hue (red-centred, degrees)": ((hsv[:, 0] * 2.0 + 180.0) % 360.0) - 180.0,
    }


_CHANNEL_NAMES = tuple(_channels(np.zeros((1, 3), np.uint8)))
_STATS = ("mean", "sd", *(f"p{p}" for p in PERCENTILES))
_EXTRA_NAMES = (
    "high hue ratio (share of red-hued pixels)",
    "pallor ratio a*/L* (median)",
    "chroma sqrt(a*²+b*²) (median)",
    "redness contrast p90/p50 of a*",
    "erythema index spread p90-p10",
)
COLOUR_NAMES: tuple[str, ...] = tuple(f"{c}: {s}" for c in _CHANNEL_NAMES for s in _STATS) + _EXTRA_NAMES
N_COLOUR = len(COLOUR_NAMES)


def colour_features(rgb: np.ndarray) -> np.ndarray:
    """The :data:`COLOUR_NAMES` features of ``(N, 3)`` RGB tissue pixels."""
    ch = _channels(rgb)
    out: list[float] = []
    for name in _CHANNEL_NAMES:
        v = ch[name]
        out.append(float(v.mean()))
        out.append(float(v.std()))
        out.extend(float(x) for x in np.percentile(v, PERCENTILES))
    hue = ch["hue (red-centred, degrees)"]
    a_star, l_star, b_star = ch["CIELAB a* (red-green)"], ch["CIELAB L* (lightness)"], ch["CIELAB b* (yellow-blue)"]
    a50, a90 = np.percentile(a_star, [50, 90])
    ei10, ei90 = np.percentile(ch["erythema index 100·log10(R/G)"], [10, 90])
    out.extend(
        [
            float(np.mean(np.abs(hue) <= 20.0)),
            float(np.median(a_star / (l_star + _EPS))),
            float(np.median(np.sqrt(a_star**2 + b_star**2))),
            float(a90 / (abs(a50) + _EPS)),
            float(ei90 - ei10),
        ]
    )
    return np.asarray(out, np.float32)


FEATURE_SETS = ("hsv", "colour", "hsv+colour")
FeatureSet = Literal["hsv", "colour", "hsv+colour"]


def feature_names(feature_set: str) -> list[str]:
    """Readable names of a feature set's columns, in order."""

    names: list[str] = []
    if "hsv" in feature_set.split("+"):
        names += [f"HSV histogram bin {bin_label(i)}" for i in range(N_HSV)]
    if "colour" in feature_set.split("+"):
        names += list(COLOUR_NAMES)
    if not names:
        raise ValueError(f"unknown feature set {feature_set!r}; known: {FEATURE_SETS}")
    return names


def features_of_tissue(t: Tissue, feature_set: str) -> np.ndarray:
    """One feature row of ``feature_set`` from already-masked tissue pixels."""
    parts = feature_set.split("+")
    cols: list[np.ndarray] = []
    if "hsv" in parts:
        cols.append(hsv_histogram(t.rgb))
    if "colour" in parts:
        cols.append(colour_features(t.rgb))
    if not cols:
        raise ValueError(f"unknown feature set {feature_set!r}; known: {FEATURE_SETS}")
    return np.concatenate(cols).astype(np.float32)


def conjunctiva_features(pixels: np.ndarray, feature_set: str) -> tuple[np.ndarray, Tissue]:
    """Features of one RGB or RGBA ``uint8`` image, and the tissue they came from."""
    t = tissue(pixels)
    return features_of_tissue(t, feature_set), t
