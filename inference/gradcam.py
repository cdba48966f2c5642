"""Grad-CAM for Keras models, fused with the forward pass.

The gradient pass already yields the class scores, so prediction and explanation come out
of one compiled call. The target layer may sit inside a nested model (a DenseNet inside a
Functional/Sequential wrapper): instead of rebuilding a sub-graph from the outer inputs to
the inner layer (the classic "Graph disconnected" failure), we attach a scoped hook to the
layer's ``call`` while the fused function is traced. The hook records the layer's output
inside the same computation and asks the tape to watch it; the hook is released as soon
as tracing is done, so the model itself is left untouched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from inference.errors import ModelLoadFailed

Tensor = Any


def _walk(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Layers in forward order, descending into nested models."""
    for layer in model.layers:
        sub = getattr(layer, "layers", None)
        if isinstance(layer, keras.Model) and sub:
            yield from _walk(layer)
        yield layer


def _output_shape(layer: keras.layers.Layer) -> tuple[int | None, ...] | None:
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return None


def find_target_layer(model: keras.Model, name: str | None = None, min_grid: int = 1) -> keras.layers.Layer:
    """The layer to explain: ``name`` if given (searched in nested models too), else the last
    layer with a 4-D output whose spatial grid is at least ``min_grid`` wide."""
    layers = list(_walk(model))
    if name is not None:
        for layer in layers:
            if layer.name == name:
                return layer
        raise ModelLoadFailed(f"Grad-CAM layer {name!r} not found in model {model.name!r}")
    candidates = []
    for layer in layers:
        if isinstance(layer, (keras.layers.InputLayer, keras.Model)):
            continue
        shape = _output_shape(layer)
        if shape is not None and len(shape) == 4:
            grid = min(s for s in shape[1:3] if s is not None) if None not in shape[1:3] else min_grid
            if grid >= min_grid:
                candidates.append(layer)
    if not candidates:
        raise ModelLoadFailed(f"model {model.name!r} has no 4-D feature map to explain (min grid {min_grid})")
    return candidates[-1]


class _Hook:
    """Records a layer's output during one trace; released on exit."""

    def __init__(self) -> None:
        self.tape: tf.GradientTape | None = None
        self.output: Tensor | None = None


@contextmanager
def attach_hook(layer: keras.layers.Layer) -> Iterator[_Hook]:
    hook = _Hook()
    original = layer.call

    def hooked(*args: Any, **kwargs: Any) -> Tensor:
        out = original(*args, **kwargs)
        if hook.tape is not None:
            hook.tape.watch(out)
            hook.output = out
        return out

    layer.call = hooked
    try:
        yield hook
    finally:
        # Restore the class method: deleting the instance attribute releases the hook.
        try:
            del layer.call
        except AttributeError:
            layer.call = original


def gradcam_weights(activations: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM channel weights: the spatial mean of the gradients. Override for variants."""
    return tf.reduce_mean(grads, axis=(1, 2))


def _output_activation(model: keras.Model) -> tuple[keras.layers.Layer | None, str | None]:
    """The model's last layer and its output activation ("softmax" or "sigmoid") when that
    layer applies one itself (``Dense(..., activation="softmax")``), else ``(None, None)``."""
    last = model.layers[-1] if model.layers else None
    fn = getattr(last, "activation", None)
    name = getattr(fn, "__name__", None)
    if last is None or name not in ("softmax", "sigmoid"):
        return None, None
    return last, name


@contextmanager
def linear_output(layer: keras.layers.Layer | None) -> Iterator[None]:
    """While tracing, make ``layer`` return its pre-activation logits; restored on exit."""
    if layer is None:
        yield
        return
    original = layer.activation
    layer.activation = keras.activations.linear
    try:
        yield
    finally:
        layer.activation = original


def _logit_log_odds(logits: Tensor, activation: str) -> Tensor:
    # Log-odds straight from the logits: exact however confident the model is. Recovering
    # them from probabilities fails once a probability rounds to 1.0 in float32 (a logit
    # margin above ~17): the clip's gradient is then zero and the map comes out empty.
    if activation == "sigmoid":
        return logits
    n = tf.shape(logits)[-1]
    eye = tf.eye(n, dtype=logits.dtype)
    others = logits[:, None, :] + eye[None] * tf.constant(-1e9, logits.dtype)  # row c: all but c
    return logits - tf.reduce_logsumexp(others, axis=-1)


def _log_odds(probs: Tensor) -> Tensor:
    # For sigmoid outputs log-odds are the logits. For softmax outputs the log-odds of class c
    # are z_c - log(sum_{j != c} exp z_j): evidence for c against the others. Either way we
    # avoid explaining a saturated probability, whose gradient vanishes when p is near 1.
    p = tf.clip_by_value(probs, 1e-7, 1.0 - 1e-7)
    return tf.math.log(p) - tf.math.log1p(-p)


class FusedExplainer:
    """Compiled forward and forward+Grad-CAM for one Keras model.

    ``forward(x)`` returns probabilities; ``forward_explain(x)`` returns
    ``(probabilities, cams)`` where ``cams`` is ``(N, h, w)`` in [0, 1] at the explained
    layer's resolution, for the predicted class of each image.
    """

    _trace_lock = threading.Lock()  # hooks mutate layers: trace one model at a time

    def __init__(
        self,
        model: keras.Model,
        *,
        input_shape: tuple[int, int, int],
        single_sigmoid: bool,
        layer_name: str | None = None,
        min_grid: int = 1,
        weights_fn: Callable[[Tensor, Tensor], Tensor] = gradcam_weights,
    ) -> None:
        self.model = model
        self.layer = find_target_layer(model, layer_name, min_grid)
        self.single_sigmoid = single_sigmoid
        self._weights_fn = weights_fn
        sig = [tf.TensorSpec((None, *input_shape), tf.float32)]
        self._hook: _Hook | None = None
        self._forward = tf.function(self._forward_impl, input_signature=sig, reduce_retracing=True)
        self._fused = tf.function(self._fused_impl, input_signature=sig, reduce_retracing=True)
        self._fused_concrete: Any = None
        self._forward_concrete: Any = None
        # Explain from the logits when the model's last layer applies softmax/sigmoid itself.
        self._out_layer, self._out_activation = _output_activation(model)

    @property
    def layer_name(self) -> str:
        return str(self.layer.name)

    def _forward_impl(self, x: Tensor) -> Tensor:
        return self.model(x, training=False)

    def _fused_impl(self, x: Tensor) -> tuple[Tensor, Tensor]:
        hook = self._hook
        assert hook is not None, "fused function traced without its hook"
        with tf.GradientTape() as tape:
            hook.tape = tape
            out = self.model(x, training=False)
            feats = hook.output
            if feats is None:
                raise ModelLoadFailed(f"layer {self.layer.name!r} did not run in the forward pass")
            if self._out_activation is None:
                probs, logits = out, _log_odds(out)
            else:  # traced under linear_output: ``out`` holds the logits
                act = tf.nn.softmax if self._out_activation == "softmax" else tf.sigmoid
                probs, logits = act(out), _logit_log_odds(out, self._out_activation)
            if self.single_sigmoid:
                # Explain the predicted side: evidence for class 1 when p >= 0.5, else against it.
                sign = tf.where(probs[:, 0] >= 0.5, 1.0, -1.0)
                score = tf.reduce_sum(sign * logits[:, 0])
            else:
                idx = tf.argmax(probs, axis=-1)
                score = tf.reduce_sum(tf.gather(logits, idx, batch_dims=1))
        hook.tape = None
        grads = tape.gradient(score, feats)
        weights = self._weights_fn(feats, grads)
        # Standard Grad-CAM: ReLU(sum_k w_k A_k), divided by the per-image peak. No min-max
        # rescaling and no offset, so cells without evidence for the class stay exactly 0.
        # When the explained layer feeds GAP -> Dense (compact_resnet, small_cnn) the gradient
        # is constant over space and this is exactly CAM: each cell's value is that cell's
        # own share of the explained score, so heat on the background is the model's own
        # evidence there, not an artefact of the explanation.
        cam = tf.nn.relu(tf.einsum("nhwc,nc->nhw", feats, weights))
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        cam = tf.math.divide_no_nan(cam, peak)
        return probs, cam

    def warm_up(self) -> None:
        """Trace both functions now (at load time), not in a user's request."""
        with self._trace_lock:
            self._forward_concrete = self._forward.get_concrete_function()
            with attach_hook(self.layer) as hook, linear_output(self._out_layer):
                self._hook = hook
                try:
                    self._fused_concrete = self._fused.get_concrete_function()
                finally:
                    self._hook = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self._forward_concrete is None:
            self.warm_up()
        out = self._forward_concrete(tf.convert_to_tensor(x, tf.float32))
        return np.asarray(out)

    def forward_explain(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._fused_concrete is None:
            self.warm_up()
        probs, cam = self._fused_concrete(tf.convert_to_tensor(x, tf.float32))
        return np.asarray(probs), np.asarray(cam)
