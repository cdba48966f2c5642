"""Train a model of the registry on an ImageFolder: ``python -m inference.train <model_id> --data DIR``.

``DIR/train/<class>/*`` and ``DIR/val/<class>/*``; folder names are the spec's class ids (a
folder's label is its class's index in the spec, not its position in a directory listing).

Keras image models:

* images are decoded with :func:`inference.imaging.decode_image` and resized exactly as
  :class:`~inference.backends.keras_image.KerasImageBackend` does (PIL bilinear), once, into
  a ``uint8`` array; a ``tf.data`` pipeline then shuffles, augments per modality, scales
  (``pixels * scale + offset``), batches and prefetches. Training therefore sees the same
  pixels as the app, with no train/serve skew;
* augmentation (``options.augment`` or derived from the modality): flips and 90° rotations
  for histopathology and skin; mild affine + contrast only for MRI and X-ray; X-ray also
  gets intensity, gamma, crop and border augmentation, for robustness to other hospitals;
  affine transforms are composed into one resampling pass per image; ``options.hflip`` adds
  left-right mirroring for MRI (a mirrored brain slice is still a brain). With
  ``options.background_noise: p`` (MRI) the background (dark pixels joined to the border,
  :func:`inference.framing.background_mask`) of a share ``p`` of training images is replaced
  by random dark noise, so the network cannot take evidence from outside the head;
* class weighting (or balanced sampling with ``options.balanced_sampling``), AdamW with a
  warm-up + cosine schedule that also follows the wall clock, early stopping on val,
  best-checkpoint saving, a wall-clock budget (``--max-minutes``), fixed seeds and a JSON
  training log;
* ``options.mixed_precision: bfloat16`` trains in mixed bfloat16 (about 1.3x faster per step
  on CPUs with AVX512-BF16/AMX, so more epochs fit a wall-clock budget); the saved model is
  rebuilt in float32, so evaluation and the app never compute in bfloat16;
* after training, calibration (temperature for softmax, Platt for sigmoid heads) is fitted on
  val outputs computed through the backend, and for binary heads with
  ``options.target_sensitivity`` the operating threshold is chosen on val;
* ``--install`` copies the ``.keras`` file to the model directory and updates the model's
  entry in the registry (weights sha256, input size, version, calibration, threshold,
  Grad-CAM layer, card fields).

The palm model (``xgboost_palm``) trains an XGBClassifier on the 512 HSV histogram features
and saves UBJSON: ``python -m inference.train palm --data DIR`` with ``DIR/train/AnemicP``,
``DIR/train/Non-AnemicP`` (and optionally ``DIR/val/...``, used for early stopping and
calibration), any PNG/JPEG/BMP/TIFF/WebP photographs of palms.

The conjunctiva model (``xgboost_conjunctiva``) has its own trainer,
:mod:`inference.train_anemia` (hospital-grouped CV, haemoglobin estimator, card).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from inference.framing import CropMode
from inference.registry import Calibration, Head, ModelSpec, Registry, bump_version, file_sha256

log = logging.getLogger("inference.train")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REGISTRY = PROJECT_ROOT / "assets" / "models.yaml"
DEFAULT_MODEL_DIR = PROJECT_ROOT / "assets" / "models"
MAX_WEIGHTS_BYTES = 20 * 1024 * 1024  # the project's limit per committed weights file

# modality keyword -> augmentation family
_AUGMENT_BY_MODALITY = (
    ("histopath", "histopathology"),
    ("h&e", "histopathology"),
    ("skin", "skin"),
    ("mri", "mri"),
    ("x-ray", "xray"),
    ("radiograph", "xray"),
)
AUGMENTATIONS = ("none", "histopathology", "skin", "mri", "xray")


# ----------------------------------------------------------------------------- data


@dataclass
class ImageFolder:
    """Files and labels (spec class indices) of one split."""

    paths: list[Path]
    labels: np.ndarray
    class_ids: list[str]

    def counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.class_ids))


def list_image_folder(root: Path, class_ids: Sequence[str], limit_per_class: int | None = None) -> ImageFolder:
    """The images under ``root/<class id>/``; folders that are not classes are an error."""
    root = Path(root)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    unknown = [f for f in folders if f not in class_ids]
    if unknown:
        raise ValueError(f"{root}: folders {unknown} are not classes of the model {list(class_ids)}")
    paths: list[Path] = []
    labels: list[int] = []
    for idx, cid in enumerate(class_ids):
        folder = root / cid
        if not folder.is_dir():
            log.warning("%s: no folder for class %s", root, cid)
            continue
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if limit_per_class is not None:
            files = files[:limit_per_class]
        paths.extend(files)
        labels.extend([idx] * len(files))
    if not paths:
        raise ValueError(f"{root}: no images found in the class folders {list(class_ids)}")
    return ImageFolder(paths, np.asarray(labels, np.int64), list(class_ids))


def split_dirs(data: Path) -> tuple[Path, Path | None]:
    """``(train, val)`` folders of an ImageFolder root; val is None when absent."""
    data = Path(data)
    train = data / "train"
    if not train.is_dir():
        raise ValueError(f"{data}: expected {train} with one folder per class")
    val = data / "val"
    return train, (val if val.is_dir() else None)


def _framing_text(spec: ModelSpec) -> str:
    if spec.input.crop == "foreground":
        return "the upload cropped to the square around its non-dark foreground, then bilinear resize"
    if spec.input.crop == "foreground_box":
        return "the upload cropped to the bounding box of its non-dark foreground, then bilinear resize to the square"
    return "bilinear resize of the upload"


def load_pixels(path: Path, size: int, crop: CropMode = "none") -> np.ndarray:
    """One image as the app sees it: ``decode_image``, then the spec's framing (crop) and
    PIL bilinear resize to ``size`` (``inference.framing.frame_image``)."""
    from inference.framing import frame_image
    from inference.imaging import decode_image

    pixels = decode_image(Path(path).read_bytes(), filename=Path(path).name).pixels
    return frame_image(pixels, size, crop)[0]


def load_images(
    paths: Sequence[Path], size: int, desc: str = "decode", workers: int = 2, crop: CropMode = "none"
) -> np.ndarray:
    """Decode and frame ``paths`` into one ``(N, size, size, 3)`` uint8 array."""
    from tqdm import tqdm

    out = np.empty((len(paths), size, size, 3), np.uint8)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, arr in enumerate(
            tqdm(pool.map(lambda p: load_pixels(p, size, crop), paths), total=len(paths), desc=desc, disable=None)
        ):
            out[i] = arr
    return out


def augmentation_for(spec: ModelSpec) -> str:
    """``options.augment`` if set, else the family matching the spec's modality."""
    explicit = spec.options.get("augment")
    if explicit is not None:
        if explicit not in AUGMENTATIONS:
            raise ValueError(f"{spec.id}: unknown augment {explicit!r}; known: {AUGMENTATIONS}")
        return str(explicit)
    modality = spec.modality.lower()
    for key, kind in _AUGMENT_BY_MODALITY:
        if key in modality:
            return kind
    return "none"


def make_augment(kind: str, size: int, hflip: bool = False) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """Per-sample and per-batch augmentation functions on float32 images in [0, 255].

    Returns ``(sample_fn, batch_fn)``; either may be the identity. Their random ops follow
    TensorFlow's global seed (``keras.utils.set_random_seed`` in :func:`fit_keras`). ``hflip``
    adds random left-right mirroring to the MRI family (``options.hflip``): a mirrored axial or coronal
    brain slice is still a plausible brain, unlike a mirrored chest film (heart on the right).
    """
    import tensorflow as tf

    def identity(x: Any) -> Any:
        return x

    def rot90(x: Any) -> Any:
        k = tf.random.uniform((), 0, 4, dtype=tf.int32)
        return tf.image.rot90(x, k)

    def flips(x: Any) -> Any:
        x = tf.image.random_flip_left_right(x)
        return tf.image.random_flip_up_down(x)

    def colour(x: Any, brightness: float, contrast: float, saturation: float, hue: float) -> Any:
        x = x / 255.0
        x = tf.image.random_brightness(x, brightness)
        x = tf.image.random_contrast(x, 1.0 - contrast, 1.0 + contrast)
        if saturation:
            x = tf.image.random_saturation(x, 1.0 - saturation, 1.0 + saturation)
        if hue:
            x = tf.image.random_hue(x, hue)
        return tf.clip_by_value(x, 0.0, 1.0) * 255.0

    def xray_intensity(x: Any) -> Any:
        # gamma, gain/offset and contrast: exposure and processing differ between hospitals
        x = x / 255.0
        gamma = tf.exp(tf.random.uniform((), math.log(0.7), math.log(1.4)))
        x = tf.pow(tf.clip_by_value(x, 1e-6, 1.0), gamma)
        x = x * tf.random.uniform((), 0.85, 1.15) + tf.random.uniform((), -0.08, 0.08)
        x = tf.image.random_contrast(x, 0.8, 1.2)
        return tf.clip_by_value(x, 0.0, 1.0) * 255.0

    def xray_crop(x: Any) -> Any:
        # crop 80-100 % of the side at a random place, resize back (different field of view)
        frac = tf.random.uniform((), 0.8, 1.0)
        side = tf.cast(tf.round(frac * size), tf.int32)
        x = tf.image.random_crop(x, tf.stack([side, side, 3]))
        return tf.image.resize(x, (size, size), antialias=True)

    def xray_border(x: Any) -> Any:
        # a black or white band on one random edge, as collimation and scanner borders make
        width = tf.cast(tf.random.uniform((), 0.0, 0.1) * size, tf.int32)
        value = tf.where(tf.random.uniform(()) < 0.5, 0.0, 255.0)
        ramp = tf.range(size)
        band = tf.cast(ramp < width, tf.float32)
        edge = tf.random.uniform((), 0, 4, dtype=tf.int32)
        band = tf.switch_case(
            edge,
            [
                lambda: band[:, None] * tf.ones((1, size)),
                lambda: band[::-1][:, None] * tf.ones((1, size)),
                lambda: tf.ones((size, 1)) * band[None, :],
                lambda: tf.ones((size, 1)) * band[::-1][None, :],
            ],
        )[..., None]
        apply = tf.cast(tf.random.uniform(()) < 0.3, tf.float32)
        band = band * apply
        return x * (1.0 - band) + value * band

    def affine(rotation_deg: float, zoom: float, shift: float, fill: str) -> Callable[[Any], Any]:
        """Random rotation (+-deg), zoom (1 +- zoom) and shift (+- share of the side) per image,
        composed into one projective transform: one bilinear resampling pass, where three
        chained Keras layers took three (and a third of a CPU epoch's time)."""
        fill_mode = fill.upper()

        def apply(x: Any) -> Any:
            n = tf.shape(x)[0]
            h = tf.cast(tf.shape(x)[1], tf.float32)
            w = tf.cast(tf.shape(x)[2], tf.float32)
            theta = tf.random.uniform((n,), -1.0, 1.0) * (rotation_deg * math.pi / 180.0)
            scale = tf.random.uniform((n,), 1.0 - zoom, 1.0 + zoom)
            tx = tf.random.uniform((n,), -shift, shift) * w
            ty = tf.random.uniform((n,), -shift, shift) * h
            cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
            cos, sin = tf.cos(theta) * scale, tf.sin(theta) * scale
            # output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2)
            a2 = cx - cos * cx + sin * cy + tx
            b2 = cy - sin * cx - cos * cy + ty
            zeros = tf.zeros_like(theta)
            transforms = tf.stack([cos, -sin, a2, sin, cos, b2, zeros, zeros], axis=1)
            return tf.raw_ops.ImageProjectiveTransformV3(
                images=x,
                transforms=transforms,
                output_shape=tf.shape(x)[1:3],
                fill_value=0.0,
                interpolation="BILINEAR",
                fill_mode=fill_mode,
            )

        return apply

    if kind == "none":
        return identity, identity
    if kind == "histopathology":

        def histo(x: Any) -> Any:
            return colour(rot90(flips(x)), 0.06, 0.12, 0.12, 0.03)

        return histo, identity
    if kind == "skin":
        skin_affine = affine(20.0, 0.15, 0.08, "reflect")

        def skin(x: Any) -> Any:
            return colour(rot90(flips(x)), 0.1, 0.15, 0.15, 0.02)

        def skin_batch(x: Any) -> Any:
            return skin_affine(x)

        return skin, skin_batch
    if kind in ("mri", "xray"):
        mild = affine(8.0, 0.08, 0.05, "constant")

        def contrast(x: Any) -> Any:
            x = x / 255.0
            x = tf.image.random_contrast(x, 0.8, 1.2)
            return tf.clip_by_value(x, 0.0, 1.0) * 255.0

        def mild_batch(x: Any) -> Any:
            return mild(x)

        if kind == "mri":
            if hflip:
                return (lambda x: tf.image.random_flip_left_right(contrast(x))), mild_batch
            return contrast, mild_batch

        def xray(x: Any) -> Any:
            return xray_border(xray_intensity(xray_crop(x)))

        return xray, mild_batch
    raise ValueError(f"unknown augmentation {kind!r}")


def targets_for(head: Head, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Training targets for the head: class indices, one-hot, or a 0/1 column."""
    if head is Head.SOFTMAX:
        return labels.astype(np.int32)
    if head is Head.SIGMOID_MULTI:
        return np.eye(n_classes, dtype=np.float32)[labels]
    if head is Head.SIGMOID_SINGLE:
        return labels.astype(np.float32)[:, None]
    raise ValueError(f"{head.value} heads are not trained by the Keras trainer")


def class_weights(counts: np.ndarray) -> np.ndarray:
    """``N / (K * n_c)`` per class (1 for an absent class)."""
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    w = np.ones_like(counts)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


# ----------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """Everything one training run needs besides the spec and data."""

    data: Path
    out: Path
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 6
    seed: int = 1337
    size: int | None = None
    architecture: str | None = None
    backbone_weights: Path | None = None  # local pretrained DenseNet201 weights (no download)
    monitor: str = "val_loss"
    max_minutes: float | None = None
    limit_per_class: int | None = None
    install: bool = False
    keep_better: bool = False
    registry: Path = DEFAULT_REGISTRY
    model_dir: Path = DEFAULT_MODEL_DIR
    version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def json_log_callback(path: Path, header: dict[str, Any]) -> Any:
    """A Keras callback that keeps ``header`` plus every epoch's metrics and time in one JSON file.

    The file is rewritten after each epoch, so a run in progress can be followed; the
    callback's ``data`` dict is the file's content and ``write()`` saves it again.
    """
    import keras

    class JsonLog(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.path = Path(path)
            self.data: dict[str, Any] = {**header, "epochs": []}
            self._t0 = time.perf_counter()

        def write(self) -> None:
            self.path.write_text(json.dumps(self.data, indent=2, default=str), encoding="utf-8")

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            entry = {
                "epoch": epoch + 1,
                "seconds": round(time.perf_counter() - self._t0, 1),
                "lr": float(np.asarray(self.model.optimizer.learning_rate)),
                **{k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"},
            }
            self.data["epochs"].append(entry)
            self.write()
            log.info("epoch %d: %s", epoch + 1, json.dumps(entry))

    return JsonLog()


def lr_at(progress: float, peak: float, warmup: float, floor: float = 0.02) -> float:
    """Learning rate at ``progress`` in [0, 1] of a run: linear warm-up from 10 % of ``peak``
    over the first ``warmup`` fraction, then cosine decay to ``floor * peak``."""
    if progress < warmup:
        return peak * (0.1 + 0.9 * progress / warmup)
    q = min(1.0, (progress - warmup) / max(1e-9, 1.0 - warmup))
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * q)))


def _schedule_callback(peak: float, total_steps: int, warmup_steps: int, budget_s: float | None) -> Any:
    """Warm-up + cosine learning rate, set per batch, that also follows the wall clock.

    Progress is the larger of steps done / planned and time spent / budget, so a run slowed
    down by a busy machine still anneals before the time budget stops it.
    """
    import keras

    class Schedule(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            self.start = time.perf_counter()
            self.step = 0

        def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            progress = self.step / max(1, total_steps)
            if budget_s:
                progress = max(progress, (time.perf_counter() - self.start) / budget_s)
            self.model.optimizer.learning_rate = lr_at(progress, peak, warmup_steps / max(1, total_steps))

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self.step += 1

    return Schedule()


def _time_budget_callback(max_minutes: float) -> Any:
    import keras

    class TimeBudget(keras.callbacks.Callback):
        """Stop before an epoch would end past the wall-clock budget."""

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            self.start = time.perf_counter()
            self.epoch_start = self.start
            self.longest = 0.0
            self.stopped = False

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.epoch_start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            now = time.perf_counter()
            self.longest = max(self.longest, now - self.epoch_start)
            if now - self.start + self.longest > max_minutes * 60.0:
                log.info("stopping: the next epoch would pass the %.0f-minute budget", max_minutes)
                self.model.stop_training = True
                self.stopped = True

    return TimeBudget()


# ----------------------------------------------------------------------------- keras training


def _dataset(
    images: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray | None,
    spec: ModelSpec,
    cfg: TrainConfig,
    *,
    train: bool,
    labels: np.ndarray | None = None,
) -> Any:
    import tensorflow as tf

    scale, offset = spec.input.scale, spec.input.offset
    size = images.shape[1]
    sample_fn, batch_fn = make_augment(
        augmentation_for(spec) if train else "none", size, hflip=bool(spec.options.get("hflip"))
    )

    noise_p = float(spec.options.get("background_noise", 0.0)) if train else 0.0
    if noise_p > 0 and images.shape[-1] == 3:
        images = with_background_mask(images)  # the mask travels as a fourth channel

    def prep(x: Any, *rest: Any) -> Any:
        x = tf.cast(x, tf.float32)
        if x.shape[-1] == 4:  # RGB + background mask (see with_background_mask)
            x, bg = x[..., :3], x[..., 3:] > 127.0
            if noise_p > 0:
                # Random dark texture outside the head: the network cannot take evidence from
                # the background or from the shape of a perfectly black edge around the head.
                level = tf.random.uniform((), 0.0, 60.0)
                sigma = tf.random.uniform((), 0.0, 25.0)
                noise = tf.clip_by_value(level + sigma * tf.random.normal(tf.shape(x)[:2])[..., None], 0.0, 255.0)
                apply = tf.random.uniform(()) < noise_p
                x = tf.where(tf.logical_and(bg, apply), noise, x)
        if train:
            x = sample_fn(x)
        return (x, *rest)

    def finish(x: Any, *rest: Any) -> Any:
        if train:
            x = batch_fn(x)
        x = tf.clip_by_value(x, 0.0, 255.0) * scale + offset
        return (x, *rest)

    auto = tf.data.AUTOTUNE
    parts: tuple[Any, ...] = (images, targets) if weights is None else (images, targets, weights)
    if train and spec.options.get("balanced_sampling") and labels is not None:
        per_class = []
        for c in range(len(spec.classes)):
            idx = np.flatnonzero(labels == c)
            if idx.size == 0:
                continue
            ds_c = tf.data.Dataset.from_tensor_slices(tuple(p[idx] for p in parts))
            per_class.append(ds_c.shuffle(idx.size, seed=cfg.seed + c, reshuffle_each_iteration=True).repeat())
        ds = tf.data.Dataset.sample_from_datasets(
            per_class, weights=[1.0 / len(per_class)] * len(per_class), seed=cfg.seed
        )
    else:
        ds = tf.data.Dataset.from_tensor_slices(parts)
        if train:
            ds = ds.shuffle(len(images), seed=cfg.seed, reshuffle_each_iteration=True)
    ds = ds.map(prep, num_parallel_calls=auto)
    ds = ds.batch(cfg.batch_size, drop_remainder=train)
    ds = ds.map(finish, num_parallel_calls=auto)
    return ds.prefetch(auto)


def with_background_mask(images: np.ndarray) -> np.ndarray:
    """``images`` with a fourth channel: 255 where :func:`inference.framing.background_mask`."""
    from inference.framing import background_mask

    out = np.empty((*images.shape[:3], 4), np.uint8)
    out[..., :3] = images
    for i, img in enumerate(images):
        out[i, ..., 3] = background_mask(img) * np.uint8(255)
    return out


def _loss_and_metric(head: Head) -> tuple[Any, Any]:
    import keras

    if head is Head.SOFTMAX:
        return keras.losses.SparseCategoricalCrossentropy(), keras.metrics.SparseCategoricalAccuracy(name="acc")
    if head is Head.SIGMOID_MULTI:
        return keras.losses.BinaryCrossentropy(), keras.metrics.CategoricalAccuracy(name="acc")
    return keras.losses.BinaryCrossentropy(), keras.metrics.BinaryAccuracy(name="acc")


def raw_outputs(backend: Any, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Raw model outputs through the backend's own preprocess + forward (no explanation)."""
    outs = []
    for i in range(0, len(images), batch_size):
        # the images are already framed (load_images), so only normalise: framing twice
        # would crop a cropped image again
        batch = backend.normalise(images[i : i + batch_size])
        raw, _ = backend.forward(batch, explain=False)
        outs.append(np.asarray(raw, np.float64))
    return np.concatenate(outs, axis=0)


def _batchnorm_layers(model: Any) -> list[Any]:
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif getattr(layer, "layers", None):
            found.extend(_batchnorm_layers(layer))
    return found


def reestimate_batchnorm(model: Any, images: np.ndarray, spec: ModelSpec, batch_size: int = 32) -> int:
    """Recompute every BatchNorm layer's moving mean/variance on ``images`` (uint8, no
    augmentation) as an exact average over the batches ("precise BN").

    The exponential averages kept during training lag behind weights that are still moving;
    inference then normalises with stale statistics. Returns the number of layers updated.
    """
    bns = _batchnorm_layers(model)
    if not bns:
        return 0
    saved = [layer.momentum for layer in bns]
    try:
        for k, start in enumerate(range(0, len(images), batch_size)):
            for layer in bns:
                layer.momentum = k / (k + 1.0)  # cumulative mean of the batch statistics
            x = images[start : start + batch_size].astype(np.float32) * spec.input.scale + spec.input.offset
            model(x, training=True)
    finally:
        for layer, momentum in zip(bns, saved, strict=True):
            layer.momentum = momentum
    return len(bns)


def _precise_bn_validation_callback(x_bn: np.ndarray, val_ds: Any, spec: ModelSpec, batch_size: int) -> Any:
    """At each epoch end: re-estimate BN statistics on clean training images, then validate.

    Keras' own validation would use the lagging moving averages, which makes val loss (and
    so early stopping and checkpoint choice) noisy. This callback must come first in the
    list, so the ``val_*`` values it adds to ``logs`` reach the callbacks after it.
    """
    import keras

    class PreciseBNValidation(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            reestimate_batchnorm(self.model, x_bn, spec, batch_size)
            result = self.model.evaluate(val_ds, verbose=0, return_dict=True)
            if logs is not None:
                logs.update({f"val_{k}": float(v) for k, v in result.items()})

    return PreciseBNValidation()


PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


@contextmanager
def training_precision(name: object) -> Iterator[None]:
    """Build layers under a mixed-precision policy: ``options.mixed_precision: bfloat16``.

    Only the copy that is trained is built inside this block; :func:`fit_keras` copies its
    weights (float32 variables under either policy) into a model built in float32, so the
    saved model, calibration, evaluation and the app all compute in float32. bfloat16 needs
    no loss scaling, and on CPUs with AMX/AVX512-BF16 it made a compact_resnet train step
    ~1.3x faster: more epochs fit a wall-clock budget.
    """
    import keras

    key = "float32" if name is None else str(name)
    if key not in PRECISIONS:
        raise ValueError(f"options.mixed_precision must be one of {sorted(PRECISIONS)}, not {name!r}")
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISIONS[key])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def fit_keras(
    spec: ModelSpec,
    cfg: TrainConfig,
    arch: str,
    x_train: np.ndarray,
    train_labels: np.ndarray,
    x_val: np.ndarray,
    val_labels: np.ndarray,
    *,
    select_best: bool = True,
) -> tuple[Any, Any, float]:
    """Fit a fresh model; returns ``(uncompiled model, its JSON log callback, seconds)``.

    With ``select_best`` the val set drives early stopping and the best epoch's weights are
    kept; without it (cross-validation, where val is the test fold) every epoch runs and the
    last weights are kept, so the test fold never influences the model. Finally the
    BatchNorm statistics are re-estimated on up to ``options.bn_images`` (1024) training
    images without augmentation.
    """
    import keras

    from inference.architectures import build_model

    keras.utils.set_random_seed(cfg.seed)
    size = x_train.shape[1]
    k = len(spec.classes)
    counts = np.bincount(train_labels, minlength=k)
    balanced = bool(spec.options.get("balanced_sampling"))
    cw = class_weights(counts)
    sample_w = None if balanced else cw[train_labels].astype(np.float32)
    train_ds = _dataset(
        x_train, targets_for(spec.head, train_labels, k), sample_w, spec, cfg, train=True, labels=train_labels
    )
    val_ds = _dataset(x_val, targets_for(spec.head, val_labels, k), None, spec, cfg, train=False)
    steps = len(x_train) // cfg.batch_size
    if steps == 0:
        raise ValueError(f"{len(x_train)} training images are fewer than one batch of {cfg.batch_size}")

    with training_precision(spec.options.get("mixed_precision")):
        model = build_model(spec, arch, size)
    log.info(
        "%s: %s, %d parameters, input %d px, %s",
        spec.id,
        arch,
        model.count_params(),
        size,
        model.dtype_policy.name,
    )
    loss, metric = _loss_and_metric(spec.head)
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=cfg.learning_rate * 0.1, weight_decay=cfg.weight_decay),
        loss=loss,
        metrics=[metric],
    )
    cfg.out.mkdir(parents=True, exist_ok=True)
    ckpt = cfg.out / "best.weights.h5"
    header = {
        "model_id": spec.id,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "architecture": arch,
        "parameters": int(model.count_params()),
        "input_size": size,
        "augment": augmentation_for(spec),
        "dtype_policy": model.dtype_policy.name,
        "balanced_sampling": balanced,
        "class_weights": None if balanced else cw.round(4).tolist(),
        "train_counts": counts.tolist(),
        "val_counts": np.bincount(val_labels, minlength=k).tolist(),
        "select_best": select_best,
        "config": {k2: str(v) if isinstance(v, Path) else v for k2, v in vars(cfg).items()},
    }
    json_log = json_log_callback(cfg.out / "train_log.json", header)
    mode = "max" if "acc" in cfg.monitor else "min"
    budget_s = cfg.max_minutes * 60.0 if cfg.max_minutes else None
    rng = np.random.default_rng(cfg.seed)
    n_bn = int(spec.options.get("bn_images", 1024))
    x_bn = x_train[rng.permutation(len(x_train))[: min(n_bn, 512)]]
    callbacks: list[Any] = [
        _precise_bn_validation_callback(x_bn, val_ds, spec, cfg.batch_size),
        _schedule_callback(cfg.learning_rate, steps * cfg.epochs, steps, budget_s),
        json_log,
    ]
    if select_best:
        callbacks += [
            keras.callbacks.ModelCheckpoint(
                ckpt, monitor=cfg.monitor, mode=mode, save_best_only=True, save_weights_only=True, verbose=0
            ),
            keras.callbacks.EarlyStopping(monitor=cfg.monitor, mode=mode, patience=cfg.patience, verbose=1),
        ]
    budget_cb = _time_budget_callback(cfg.max_minutes) if cfg.max_minutes else None
    if budget_cb is not None:
        callbacks.append(budget_cb)
    t0 = time.perf_counter()
    model.fit(
        train_ds,
        epochs=cfg.epochs,
        steps_per_epoch=steps,
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles itself, with a fixed seed
        verbose=1 if sys.stderr.isatty() else 2,
    )
    seconds = time.perf_counter() - t0
    json_log.data["stopped_by_budget"] = bool(getattr(budget_cb, "stopped", False))
    if select_best:
        model.load_weights(ckpt)
    # A fresh, uncompiled copy: the saved file carries no optimizer state. Its weights all come
    # from the trained model, so a pretrained backbone file is not read a second time.
    bare = {k: v for k, v in spec.options.items() if k != "backbone_weights"}
    final = build_model(spec.model_copy(update={"options": bare}), arch, size)
    final.set_weights(model.get_weights())
    if n_bn > 0:
        pick = rng.permutation(len(x_train))[:n_bn]
        updated = reestimate_batchnorm(final, x_train[pick], spec, cfg.batch_size)
        json_log.data["batchnorm_reestimated"] = {"layers": updated, "images": len(pick)}
        json_log.write()
    return final, json_log, seconds


def train_keras(spec: ModelSpec, cfg: TrainConfig) -> dict[str, Any]:
    """Train, calibrate and save one Keras image model; returns the run summary."""
    from inference.architectures import ARCHITECTURES
    from inference.backends.keras_image import KerasImageBackend, configure_tensorflow
    from inference.heads import apply_head
    from inference.metrics import classification_metrics, fit_calibration, nll, threshold_for_sensitivity

    configure_tensorflow("auto")
    arch = cfg.architecture or str(spec.options.get("architecture", "compact_resnet"))
    size = cfg.size or int(spec.options.get("train_size", spec.input.size))
    spec = spec.model_copy(update={"input": spec.input.model_copy(update={"size": size})})
    train_dir, val_dir = split_dirs(cfg.data)
    if val_dir is None:
        raise ValueError(f"{cfg.data}: needs a val folder for early stopping and calibration")
    train_set = list_image_folder(train_dir, spec.class_ids, cfg.limit_per_class)
    val_set = list_image_folder(val_dir, spec.class_ids, cfg.limit_per_class)
    log.info(
        "%s: %d train %s, %d val %s",
        spec.id,
        len(train_set.paths),
        train_set.counts().tolist(),
        len(val_set.paths),
        val_set.counts().tolist(),
    )
    t_load = time.perf_counter()
    x_train = load_images(train_set.paths, size, "decode train", crop=spec.input.crop)
    x_val = load_images(val_set.paths, size, "decode val", crop=spec.input.crop)
    log.info("decoded in %.1fs", time.perf_counter() - t_load)
    # options.select_best: false trains a fixed number of epochs and keeps the last weights: for a
    # val split too small to pick an epoch by (monkeypox: 26 photos), and the recipe CV scores.
    select = bool(spec.options.get("select_best", True))
    final, json_log, train_seconds = fit_keras(
        spec, cfg, arch, x_train, train_set.labels, x_val, val_set.labels, select_best=select
    )
    mode = "max" if "acc" in cfg.monitor else "min"
    gradcam_layer = spec.gradcam_layer or ARCHITECTURES[arch].gradcam_layer
    spec = spec.model_copy(update={"gradcam_layer": gradcam_layer, "calibration": Calibration()})
    backend = KerasImageBackend(spec, final, "cpu")
    raw_val = raw_outputs(backend, x_val)
    probs_uncal = apply_head(raw_val, spec.head)
    cal = fit_calibration(spec.head, val_set.labels, raw_val, fitted_on=f"val ({len(val_set.paths)} images)")
    probs_cal = apply_head(raw_val, spec.head, cal)
    threshold = spec.threshold
    target = spec.options.get("target_sensitivity")
    if target is not None and spec.head is Head.SIGMOID_SINGLE:
        threshold = threshold_for_sensitivity(val_set.labels == 1, probs_cal[:, 1], float(target))
    spec = spec.model_copy(update={"calibration": cal, "threshold": threshold})
    val_metrics = classification_metrics(val_set.labels, probs_cal, spec)
    summary: dict[str, Any] = {
        "train_seconds": round(train_seconds, 1),
        "parameters": int(final.count_params()),
        "epochs_run": len(json_log.data["epochs"]),
        "best_epoch": _best_epoch(json_log.data["epochs"], cfg.monitor, mode),
        "select_best": select,
        "stopped_by_budget": bool(json_log.data.get("stopped_by_budget")),
        "val_nll_uncalibrated": nll(val_set.labels, probs_uncal),
        "val_nll_calibrated": nll(val_set.labels, probs_cal),
        "calibration": cal.model_dump(),
        "threshold": threshold,
        "gradcam_layer": gradcam_layer,
        "val_metrics": val_metrics,
    }
    model_path = cfg.out / f"{spec.id}.keras"
    final.save(model_path)
    summary["weights_bytes"] = model_path.stat().st_size
    json_log.data["result"] = summary
    json_log.write()
    log.info(
        "%s: val accuracy %.4f, balanced %.4f, ECE %.4f (NLL %.4f -> %.4f), %s",
        spec.id,
        val_metrics["accuracy"],
        val_metrics["balanced_accuracy"],
        val_metrics["ece"],
        summary["val_nll_uncalibrated"],
        summary["val_nll_calibrated"],
        cal.model_dump(),
    )
    if summary["weights_bytes"] > MAX_WEIGHTS_BYTES:
        raise RuntimeError(f"{model_path} is {summary['weights_bytes'] / 2**20:.1f} MB, over the 20 MB limit")
    if cfg.install and cfg.keep_better:
        evaluated = Registry.from_yaml(cfg.registry)[spec.id].card.get("evaluation") or {}
        old = evaluated.get("balanced_accuracy")
        if old is not None and val_metrics["balanced_accuracy"] < float(old):
            log.warning(
                "%s: not installed, val balanced accuracy %.4f is below the installed model's %.4f",
                spec.id,
                val_metrics["balanced_accuracy"],
                float(old),
            )
            summary["installed"] = False
            return summary
    if cfg.install:
        install(spec, model_path, cfg, summary, arch, len(train_set.paths), len(val_set.paths))
        summary["installed"] = True
    return summary


def cross_validate(spec: ModelSpec, cfg: TrainConfig, folds: int) -> dict[str, Any]:
    """Patient-grouped, class-stratified k-fold CV over train + val pooled.

    Groups come from ``options.group_pattern`` (a regex whose first group is the patient ID,
    matched on the file name); each test fold is scored on its *original* photos only
    (``options.original_pattern``), so augmented copies never count twice and never leak.
    No fold uses its test images for early stopping, calibration or any other choice: each
    fold trains for exactly ``cfg.epochs`` and keeps its last weights. Writes
    ``cfg.out/cv.json`` and, with ``cfg.install``, a ``cv`` line in the model's card.
    """
    import re

    from sklearn.model_selection import StratifiedGroupKFold

    from inference.backends.keras_image import KerasImageBackend, configure_tensorflow
    from inference.heads import apply_head
    from inference.metrics import classification_metrics

    configure_tensorflow("auto")
    arch = cfg.architecture or str(spec.options.get("architecture", "compact_resnet"))
    size = cfg.size or int(spec.options.get("train_size", spec.input.size))
    spec = spec.model_copy(update={"input": spec.input.model_copy(update={"size": size}), "calibration": Calibration()})
    group_re = re.compile(str(spec.options.get("group_pattern", r"^([^_]+)")))
    original_re = re.compile(str(spec.options.get("original_pattern", r"^[A-Za-z]+\d+_\d+\.\w+$")))
    train_dir, val_dir = split_dirs(cfg.data)
    parts = [list_image_folder(d, spec.class_ids, cfg.limit_per_class) for d in (train_dir, val_dir) if d is not None]
    paths = [p for part in parts for p in part.paths]
    labels = np.concatenate([part.labels for part in parts])
    groups = []
    for path in paths:
        m = group_re.match(path.name)
        if m is None:
            raise ValueError(f"{path.name} does not match the group pattern {group_re.pattern!r}")
        groups.append(m.group(1))
    is_original = np.array([bool(original_re.match(p.name)) for p in paths])
    x_all = load_images(paths, size, "decode", crop=spec.input.crop)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=cfg.seed)
    results: list[dict[str, Any]] = []
    base_out = cfg.out
    for fold, (tr, te) in enumerate(splitter.split(np.zeros(len(paths)), labels, groups)):
        te = te[is_original[te]]
        fold_cfg = TrainConfig(**{**vars(cfg), "out": base_out / f"fold{fold + 1}"})
        log.info(
            "fold %d/%d: %d train, %d test originals, %d patients held out",
            fold + 1,
            folds,
            len(tr),
            len(te),
            len({groups[i] for i in te}),
        )
        model, _, seconds = fit_keras(
            spec, fold_cfg, arch, x_all[tr], labels[tr], x_all[te], labels[te], select_best=False
        )
        probs = apply_head(raw_outputs(KerasImageBackend(spec, model, "cpu"), x_all[te]), spec.head)
        fm = classification_metrics(labels[te], probs, spec)
        results.append(
            {
                "fold": fold + 1,
                "n_test": len(te),
                "accuracy": fm["accuracy"],
                "balanced_accuracy": fm["balanced_accuracy"],
                "seconds": round(seconds, 1),
            }
        )
        log.info("fold %d: accuracy %.4f, balanced %.4f", fold + 1, fm["accuracy"], fm["balanced_accuracy"])
    acc = np.array([r["accuracy"] for r in results])
    bal = np.array([r["balanced_accuracy"] for r in results])
    summary = {
        "folds": results,
        "mean_accuracy": float(acc.mean()),
        "std_accuracy": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
        "mean_balanced_accuracy": float(bal.mean()),
        "patients": len(set(groups)),
        "epochs": cfg.epochs,
        "input_size": size,
    }
    base_out.mkdir(parents=True, exist_ok=True)
    (base_out / "cv.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    log.info("%d-fold CV: accuracy %.4f +- %.4f", folds, summary["mean_accuracy"], summary["std_accuracy"])
    if cfg.install:
        from inference.specs_io import update_model_entry

        text = (
            f"{folds}-fold patient-grouped CV over train+val ({summary['patients']} patients, scored on original "
            f"photos only, {cfg.epochs} epochs per fold, no early stopping): accuracy "
            f"{summary['mean_accuracy']:.3f} +- {summary['std_accuracy']:.3f}, balanced accuracy "
            f"{summary['mean_balanced_accuracy']:.3f}."
        )
        update_model_entry(cfg.registry, spec.id, {"card": {"cv": text}})
    return summary


def _best_epoch(epochs: list[dict[str, Any]], monitor: str, mode: str) -> int | None:
    values = [(e[monitor], e["epoch"]) for e in epochs if monitor in e]
    if not values:
        return None
    return (max(values) if mode == "max" else min(values))[1]


def install(
    spec: ModelSpec,
    model_path: Path,
    cfg: TrainConfig,
    summary: dict[str, Any],
    arch: str,
    n_train: int,
    n_val: int,
) -> ModelSpec:
    """Copy the weights into the model directory and update the model's registry entry."""
    from inference.specs_io import update_model_entry

    current = Registry.from_yaml(cfg.registry)[spec.id]
    dest_name = current.weights.file if current.weights else model_path.name
    dest = Path(dest_name) if Path(dest_name).is_absolute() else cfg.model_dir / dest_name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_path, dest)
    cal: dict[str, Any] = summary["calibration"]
    if spec.head is Head.SOFTMAX:
        cal_text = f"temperature T = {cal['temperature']:.3f} fitted on {cal['fitted_on']} (NLL "
    else:
        cal_text = f"Platt a = {cal['platt_a']:.3f}, b = {cal['platt_b']:.3f} fitted on {cal['fitted_on']} (NLL "
    cal_text += f"{summary['val_nll_uncalibrated']:.3f} -> {summary['val_nll_calibrated']:.3f})."
    if spec.head is Head.SIGMOID_SINGLE and spec.options.get("target_sensitivity") is not None:
        cal_text += (
            f" Operating threshold {summary['threshold']:.3f}, chosen on val for sensitivity >= "
            f"{float(spec.options['target_sensitivity']):.2f} on {spec.positive_class}; "
            "val metrics are optimistic for it."
        )
    updates: dict[str, Any] = {
        "input": {"size": spec.input.size},
        "weights": {"file": dest_name, "sha256": file_sha256(dest)},
        "version": cfg.version or bump_version(current.version),
        "gradcam_layer": summary["gradcam_layer"],
        "calibration": {k: round(v, 6) if isinstance(v, float) else v for k, v in cal.items() if v is not None},
        "threshold": round(float(summary["threshold"]), 6),
        "options": {"architecture": arch},
        "card": {
            "architecture": _arch_text(arch, summary, spec.input.size),
            "input": (
                f"RGB {spec.input.size}x{spec.input.size} px ({_framing_text(spec)}), "
                f"pixels x {spec.input.scale:.6g} + {spec.input.offset:g}."
            ),
            "training": training_text(spec, cfg, summary, arch, n_train, n_val),
            "calibration": cal_text,
        },
    }
    new = update_model_entry(cfg.registry, spec.id, updates)
    log.info("installed %s (%s, sha256 %s...)", dest, new.version, updates["weights"]["sha256"][:12])
    return new


def training_text(
    spec: ModelSpec, cfg: TrainConfig, summary: dict[str, Any], arch: str, n_train: int, n_val: int
) -> str:
    """The card's training paragraph, written from the run's own config and log.

    Everything that shaped the run is stated (recipe, flags, epochs, wall time, the command
    that reproduces it), so installing a run never leaves a shorter card than it had.
    """
    opts = spec.options
    aug = augmentation_for(spec)
    extras = []
    if opts.get("hflip"):
        extras.append("left-right mirroring")
    if opts.get("background_noise"):
        extras.append(f"background replaced by dark noise for {float(opts['background_noise']):.0%} of images")
    aug_text = aug + (f" ({', '.join(extras)})" if extras else "")
    start = "from scratch"
    if opts.get("backbone_weights"):
        start = f"from pretrained weights ({Path(str(opts['backbone_weights'])).name})"
    if summary.get("select_best", True):
        epochs = f"{summary['epochs_run']} epochs (best {summary['best_epoch']}, chosen by {cfg.monitor})"
    else:
        epochs = f"{summary['epochs_run']} epochs, last weights kept (val too small to choose an epoch)"
    budget = ""
    if cfg.max_minutes and summary.get("epochs_run", 0) < cfg.epochs and summary.get("stopped_by_budget"):
        budget = f" (the {cfg.max_minutes:g}-minute budget ended it)"
    precision = (
        "mixed bfloat16 (the saved model computes in float32)"
        if opts.get("mixed_precision") == "bfloat16"
        else "float32"
    )
    balance = "class-balanced sampling" if opts.get("balanced_sampling") else "class-weighted loss"
    args = [f"python -m inference.train {spec.id} --data <datasets>/{cfg.data.name}", f"--epochs {cfg.epochs}"]
    defaults = TrainConfig(data=cfg.data, out=cfg.out)
    for flag, value, default in (
        ("--batch-size", cfg.batch_size, defaults.batch_size),
        ("--lr", cfg.learning_rate, defaults.learning_rate),
        ("--weight-decay", cfg.weight_decay, defaults.weight_decay),
        ("--patience", cfg.patience, defaults.patience),
        ("--monitor", cfg.monitor, defaults.monitor),
        ("--seed", cfg.seed, defaults.seed),
        ("--size", cfg.size, None),
        ("--architecture", cfg.architecture, None),
        ("--max-minutes", cfg.max_minutes, None),
    ):
        if value is not None and value != default:
            args.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    return (
        f"{n_train} train / {n_val} val images; {arch} {start}, {spec.input.size} px; {epochs} in "
        f"{summary['train_seconds'] / 60:.0f} min on 2 CPU cores{budget}; batch {cfg.batch_size}, AdamW peak "
        f"learning rate {cfg.learning_rate:g} (warm-up + cosine), weight decay {cfg.weight_decay:g}; "
        f"augmentation: {aug_text}; {balance}; {precision}; seed {cfg.seed}; `{' '.join(args)}`."
    )


def _arch_text(arch: str, summary: dict[str, Any], size: int) -> str:
    if arch == "compact_resnet":
        return (
            "Compact ResNet-style CNN trained from scratch (~"
            f"{summary.get('parameters', 0) / 1e6:.1f}M parameters): 5x5 stride-2 stem + max pool, five "
            f"basic residual blocks to a {size // 16}x{size // 16}x256 map (`{summary['gradcam_layer']}`, "
            "explained by Grad-CAM), "
            "global average pool, dropout, dense output."
        )
    return f"{arch} (see inference/architectures.py); Grad-CAM layer `{summary['gradcam_layer']}`."


# ----------------------------------------------------------------------------- palm


def train_palm(spec: ModelSpec, cfg: TrainConfig) -> dict[str, Any]:
    """Train the palm XGBoost model on HSV histogram features; save UBJ (and install)."""
    import xgboost as xgb

    from inference.backends.hsv_histogram import palm_features
    from inference.backends.xgboost_palm import MARGIN_CLASS_ATTR, XGBoostPalmBackend
    from inference.heads import apply_head
    from inference.imaging import decode_image
    from inference.metrics import classification_metrics, fit_calibration

    train_dir, val_dir = split_dirs(cfg.data)
    positive = spec.class_ids[1]

    def features(folder: ImageFolder) -> np.ndarray:
        return np.stack([palm_features(decode_image(p.read_bytes(), filename=p.name).pixels) for p in folder.paths])

    train_set = list_image_folder(train_dir, spec.class_ids, cfg.limit_per_class)
    x_train = features(train_set)
    y_train = (train_set.labels == 1).astype(np.int32)
    val_set = list_image_folder(val_dir, spec.class_ids, cfg.limit_per_class) if val_dir else None
    params = {
        "n_estimators": int(spec.options.get("n_estimators", 300)),
        "max_depth": int(spec.options.get("max_depth", 4)),
        "learning_rate": float(spec.options.get("learning_rate", 0.05)),
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "random_state": cfg.seed,
        "n_jobs": 2,
        "eval_metric": "logloss",
    }
    eval_set = None
    if val_set is not None:
        x_val = features(val_set)
        eval_set = [(x_val, (val_set.labels == 1).astype(np.int32))]
        params["early_stopping_rounds"] = 30
    clf = xgb.XGBClassifier(**params)
    t0 = time.perf_counter()
    clf.fit(x_train, y_train, eval_set=eval_set, verbose=False)
    booster = clf.get_booster()
    if eval_set is not None and getattr(clf, "best_iteration", None) is not None:
        # early stopping keeps the extra trees in the booster; save only the best ones
        booster = booster[: int(clf.best_iteration) + 1]
    booster.set_attr(**{MARGIN_CLASS_ATTR: positive})
    cfg.out.mkdir(parents=True, exist_ok=True)
    model_path = cfg.out / f"{spec.id}.ubj"
    booster.save_model(str(model_path))
    summary: dict[str, Any] = {
        "train_seconds": round(time.perf_counter() - t0, 2),
        "params": params,
        "trees": int(booster.num_boosted_rounds()),
    }
    cal = Calibration()
    if val_set is not None:
        backend = XGBoostPalmBackend(spec.model_copy(update={"calibration": Calibration()}), booster)
        raw = backend.forward(x_val, explain=False)[0]
        cal = fit_calibration(spec.head, val_set.labels, raw, fitted_on=f"val ({len(val_set.paths)} images)")
        spec = spec.model_copy(update={"calibration": cal})
        summary["val_metrics"] = classification_metrics(val_set.labels, apply_head(raw, spec.head, cal), spec)
    summary["calibration"] = cal.model_dump()
    (cfg.out / "train_log.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    if cfg.install:
        from inference.specs_io import update_model_entry

        current = Registry.from_yaml(cfg.registry)[spec.id]
        dest_name = current.weights.file if current.weights else model_path.name
        dest = cfg.model_dir / dest_name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_path, dest)
        update_model_entry(
            cfg.registry,
            spec.id,
            {
                "weights": {"file": dest_name, "sha256": file_sha256(dest)},
                "version": cfg.version or bump_version(current.version),
                "calibration": {k: v for k, v in cal.model_dump().items() if v is not None},
            },
        )
    log.info("%s: saved %s", spec.id, model_path)
    return summary


# ----------------------------------------------------------------------------- CLI


def with_pretrained_backbone(spec: ModelSpec, arch: str) -> ModelSpec:
    """``spec`` with ``options.backbone_weights`` set to the imported backbone of ``arch``.

    Only for architectures meant to start pretrained (``Architecture.default_backbone``) and
    only when no file is named and ``options.pretrained`` is not false. A missing import is
    an error that says which command writes it: a pretrained recipe never silently trains
    from random weights.
    """
    from inference.architectures import ARCHITECTURES
    from inference.backbones import default_backbone_path

    entry = ARCHITECTURES.get(arch)
    if entry is None or entry.default_backbone is None:
        return spec
    if spec.options.get("backbone_weights") or spec.options.get("pretrained") is False:
        return spec
    path = default_backbone_path(entry.default_backbone)
    if not path.is_file():
        raise ValueError(
            f"{arch} starts from pretrained weights: run `python -m inference.train import-backbone "
            f"{entry.default_backbone}` first (it writes {path}), or set options.pretrained: false"
        )
    return spec.model_copy(update={"options": {**spec.options, "backbone_weights": str(path)}})


def train(model_id: str, cfg: TrainConfig, cv_folds: int | None = None) -> dict[str, Any]:
    """Train ``model_id`` of the registry at ``cfg.registry`` with ``cfg`` (or cross-validate it)."""
    spec = Registry.from_yaml(cfg.registry)[model_id]
    if cfg.backbone_weights is not None:  # for this run only: install does not write it to the registry
        spec = spec.model_copy(update={"options": {**spec.options, "backbone_weights": str(cfg.backbone_weights)}})
    spec = with_pretrained_backbone(spec, cfg.architecture or str(spec.options.get("architecture", "compact_resnet")))
    if cv_folds:
        if spec.backend != "keras_image":
            raise ValueError("--cv is implemented for Keras image models")
        return cross_validate(spec, cfg, cv_folds)
    if spec.backend == "xgboost_palm":
        return train_palm(spec, cfg)
    if spec.backend == "xgboost_conjunctiva":
        from inference.train_anemia import train_conjunctiva  # its own module: CV, estimator, card

        return train_conjunctiva(spec, cfg)
    if spec.backend != "keras_image":
        raise ValueError(f"{model_id}: the {spec.backend} backend has no trainer")
    return train_keras(spec, cfg)


def parse_args(argv: Sequence[str] | None = None) -> tuple[str, TrainConfig, int | None]:
    """Command-line arguments -> ``(model_id, TrainConfig, CV folds or None)``."""
    p = argparse.ArgumentParser(prog="python -m inference.train", description=__doc__.split("\n\n")[0])
    p.add_argument("model_id")
    p.add_argument("--data", type=Path, required=True, help="ImageFolder root with train/ and val/")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<model_id>)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--patience", type=int, default=6)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--size", type=int, default=None, help="input size (default: options.train_size or input.size)")
    p.add_argument("--architecture", default=None)
    p.add_argument(
        "--backbone-weights",
        type=Path,
        default=None,
        help="local pretrained DenseNet201 weights without the top, for densenet201 / densenet201_cut "
        "(nothing is downloaded)",
    )
    p.add_argument("--monitor", default="val_loss", help="val_loss or val_acc")
    p.add_argument("--max-minutes", type=float, default=None, help="stop before an epoch would pass this")
    p.add_argument("--limit-per-class", type=int, default=None, help="use only the first N files per class")
    p.add_argument("--install", action="store_true", help="copy the weights to --model-dir and update --registry")
    p.add_argument(
        "--keep-better",
        action="store_true",
        help="with --install: keep the installed model if its card's val balanced accuracy is higher",
    )
    p.add_argument("--registry", type=Path, default=DEFAULT_REGISTRY)
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--version", default=None, help="version to write (default: bump the current one)")
    p.add_argument("--cv", type=int, default=None, metavar="K", help="patient-grouped K-fold CV instead of training")
    a = p.parse_args(argv)
    cfg = TrainConfig(
        data=a.data,
        out=a.out or PROJECT_ROOT / "runs" / a.model_id,
        epochs=a.epochs,
        batch_size=a.batch_size,
        learning_rate=a.lr,
        weight_decay=a.weight_decay,
        patience=a.patience,
        seed=a.seed,
        size=a.size,
        architecture=a.architecture,
        backbone_weights=a.backbone_weights,
        monitor=a.monitor,
        max_minutes=a.max_minutes,
        limit_per_class=a.limit_per_class,
        install=a.install,
        keep_better=a.keep_better,
        registry=a.registry,
        model_dir=a.model_dir,
        version=a.version,
    )
    return a.model_id, cfg, a.cv


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m inference.train``; ``import-backbone NAME`` ports pretrained
    weights (:mod:`inference.backbones`), ``probe MODEL_ID`` fits a pretrained-feature probe
    (:mod:`inference.probe`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["import-backbone"]:
        from inference.backbones import main as import_main

        return import_main(args[1:])
    if args[:1] == ["probe"]:
        from inference.probe import main as probe_main

        return probe_main(args[1:])
    model_id, cfg, cv_folds = parse_args(args)
    summary = train(model_id, cfg, cv_folds)
    log.info("done: %s", json.dumps({k: v for k, v in summary.items() if k != "val_metrics"}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
