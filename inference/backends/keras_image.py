"""Keras 3 (TensorFlow) image classifiers with fused Grad-CAM."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from inference.backends.base import Backend, DevicePolicy, Prediction
from inference.errors import ModelLoadFailed
from inference.framing import Framing, frame_image, place_map
from inference.heads import labelled
from inference.registry import Head, ModelSpec

log = logging.getLogger(__name__)

_tf_lock = threading.Lock()
_tf_configured: DevicePolicy | None = None


def configure_tensorflow(device: DevicePolicy) -> str:
    """Apply the device policy once per process; returns the device used ("cpu" / "gpu").

    Memory growth is switched on for every GPU so TensorFlow does not grab the whole card
    and torch (the chat model) can share it.
    """
    global _tf_configured
    import tensorflow as tf

    with _tf_lock:
        gpus = tf.config.list_physical_devices("GPU")
        if _tf_configured is None:
            try:
                if device == "cpu" and gpus:
                    tf.config.set_visible_devices([], "GPU")
                else:
                    for gpu in gpus:
                        tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError as exc:  # TF already initialised its devices
                log.warning("could not apply TensorFlow device settings: %s", exc)
            _tf_configured = device
        if device == "gpu" and not gpus:
            raise ModelLoadFailed("DOCTORAI_DEVICE=gpu but TensorFlow sees no GPU; use auto or cpu")
        return "gpu" if gpus and device != "cpu" else "cpu"


def load_keras_model(path: Path) -> Any:
    """Load a ``.keras`` archive or a legacy ``.h5`` file, without compiling."""
    import keras

    if path.suffix not in (".keras", ".h5", ".hdf5"):
        raise ModelLoadFailed(f"{path.name}: Keras weights must be a .keras or .h5 file")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # keras raises many types for a bad file; report, don't crash
        raise ModelLoadFailed(f"could not load {path.name}: {exc}") from exc


class KerasImageBackend(Backend):
    """An image classifier whose output is probabilities (softmax or sigmoid)."""

    def __init__(self, spec: ModelSpec, model: Any, device: str) -> None:
        super().__init__(spec)
        from inference.gradcam import FusedExplainer

        self.model = model
        self.device = device
        size, ch = spec.input.size, spec.input.channels
        in_shape = tuple(model.inputs[0].shape[1:])
        if in_shape != (size, size, ch):
            raise ModelLoadFailed(f"{spec.id}: model input {in_shape} does not match the spec ({size}, {size}, {ch})")
        out_width = model.outputs[0].shape[-1]
        if out_width != spec.n_outputs:
            raise ModelLoadFailed(f"{spec.id}: model has {out_width} outputs, the spec's head needs {spec.n_outputs}")
        self.explainer = FusedExplainer(
            model,
            input_shape=(size, size, ch),
            single_sigmoid=spec.head is Head.SIGMOID_SINGLE,
            layer_name=spec.gradcam_layer,
            min_grid=spec.gradcam_min_grid,
        )

    @classmethod
    def load(cls, spec: ModelSpec, weights: Path, device: DevicePolicy) -> KerasImageBackend:
        used = configure_tensorflow(device)
        return cls(spec, load_keras_model(weights), used)

    def warm_up(self) -> None:
        self.explainer.warm_up()
        dummy = np.zeros((1, self.spec.input.size, self.spec.input.size, self.spec.input.channels), np.float32)
        self.explainer.forward_explain(dummy)
        self.explainer.forward(dummy)

    def memory_bytes(self) -> int:
        return int(sum(np.prod(w.shape) * 4 for w in self.model.weights))

    def frame(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[Framing]]:
        """Crop (per the spec's ``input.crop``) and resize to the input: uint8 ``(N, s, s, 3)``."""
        size = self.spec.input.size
        out = np.empty((len(images), size, size, 3), np.uint8)
        framings = []
        for i, pixels in enumerate(images):
            out[i], framing = frame_image(pixels, size, self.spec.input.crop)
            framings.append(framing)
        return out, framings

    def normalise(self, framed: np.ndarray) -> np.ndarray:
        """Framed uint8 images -> the model's float input (grey if one channel, scale + offset)."""
        inp = self.spec.input
        if inp.channels == 1:
            framed = np.stack([np.asarray(Image.fromarray(f).convert("L")) for f in framed])[..., None]
        return np.asarray(framed, np.float32) * inp.scale + inp.offset

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.normalise(self.frame(images)[0])

    def forward(self, batch: np.ndarray, explain: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if explain:
            return self.explainer.forward_explain(batch)
        return self.explainer.forward(batch), None

    def _prepare(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[Framing]]:
        framed, framings = self.frame(images)
        return self.normalise(framed), framings

    def _finish(self, preds: list[Prediction], context: list[Framing]) -> list[Prediction]:
        # heatmaps over the model's input go back onto each whole image's frame
        for pred, framing in zip(preds, context, strict=True):
            if pred.explanation is not None:
                pred.explanation = place_map(pred.explanation, framing)
        return preds

    def postprocess(self, raw: np.ndarray, explanations: np.ndarray | None) -> list[Prediction]:
        return [
            Prediction(
                label=label,
                probabilities=probs,
                explanation=None if explanations is None else explanations[i].astype(np.float32),
                explanation_kind=None if explanations is None else "gradcam",
            )
            for i, (label, probs) in enumerate(labelled(raw, self.spec))
        ]

    def close(self) -> None:
        # Drop our references; keras.backend.clear_session() would also reset the other
        # models sharing this process, so it is deliberately not called here.
        self.explainer = None  # type: ignore[assignment]
        self.model = None
