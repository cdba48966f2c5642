"""Keras architectures the trainer can build, selected by ``options.architecture`` in a spec.

Every builder returns an uncompiled ``keras.Model`` that takes the *scaled* image
(``pixels * input.scale + input.offset``, as :class:`~inference.backends.keras_image.KerasImageBackend`
feeds it) and ends in the activation the spec's head expects: softmax for ``softmax`` heads,
sigmoid for ``sigmoid_multi`` and ``sigmoid_single``. Only built-in layers are used, so the
saved ``.keras`` files load with ``safe_mode=True``.

* ``compact_resnet`` (default): a ~1.5M-parameter ResNet-style CNN (5x5 stride-2 stem, max
  pool, five basic residual blocks) that trains from scratch on two CPU cores (about 20
  images/s at 192 px). Its last feature map, ``gradcam_features``, is ``size / 16`` wide
  (12x12 at 192 px, 14x14 at 224 px, 256 channels) and is the layer Grad-CAM explains.
* ``densenet201``: the original lung/colon head (DenseNet201 -> GAP -> Dense 256 ->
  Dropout 0.5 -> Dense). Nothing is downloaded: the backbone starts random unless
  ``options.backbone_weights`` (or ``python -m inference.train --backbone-weights FILE``)
  names a local file of pretrained DenseNet201 weights without the top, such as Keras'
  ``densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5``; it is meant for users with a
  GPU and their own copy of ImageNet weights.
* ``densenet201_cut``: the original monkeypox head (DenseNet201 cut at
  ``conv5_block16_0_bn`` -> Flatten -> Dense 256 -> Dropout 0.2 -> Dense); same
  ``backbone_weights`` option.
* ``brain_cnn``: the original brain tumour Sequential CNN (Conv64 -> Conv512 -> Conv256 ->
  Conv128 with max-pooling, Dense 256 -> 128 -> out).
* ``small_cnn``: a plain four-block CNN in the spirit of the original chest X-ray model.
* ``efficientnet_lite0``: ImageNet-pretrained EfficientNet-Lite0 (:mod:`inference.efficientnet_lite`,
  ~3.4M parameters without the ImageNet top) -> global average pool -> dropout -> dense, fine-tuned
  end to end. Its weights come from the Keras backbone that
  ``python -m inference.train import-backbone efficientnet_lite0`` writes (default
  ``runs/backbones/efficientnet_lite0_notop.keras``, or ``options.backbone_weights``); the
  trainer refuses to start without it unless ``options.pretrained: false`` (from scratch).
  It expects ``(pixels - 127) / 128``: spec input ``scale: 0.0078125, offset: -0.9921875``.
  Grad-CAM explains ``gradcam_features``, the 14x14x112 stride-16 map at 224 px.
  ``options.drop_connect`` (stochastic depth, default 0.2) and ``options.lite_width`` /
  ``options.lite_stages`` / ``options.lite_head`` (smaller or cut networks: tests, and the
  monkeypox probe on the first six stages) apply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.registry import Head, ModelSpec

__all__ = ["ARCHITECTURES", "GRADCAM_LAYER", "Architecture", "build_model", "head_activation"]

GRADCAM_LAYER = "gradcam_features"

Builder = Callable[[int, int, int, str, dict[str, Any]], Any]


def head_activation(head: Head) -> str:
    """The final activation a Keras model needs for ``head``."""
    if head is Head.SOFTMAX:
        return "softmax"
    if head in (Head.SIGMOID_MULTI, Head.SIGMOID_SINGLE):
        return "sigmoid"
    raise ValueError(f"a {head.value} head is not a Keras image classifier")


def _compact_resnet(size: int, channels: int, n_out: int, activation: str, opts: dict[str, Any]) -> Any:
    import keras
    from keras import layers

    width = float(opts.get("width", 1.0))
    dropout = float(opts.get("dropout", 0.3))
    # Faster-moving BN statistics than Keras' 0.99: trained from scratch at a high learning
    # rate, the layer scales change quickly and slow averages leave inference mode behind.
    momentum = float(opts.get("bn_momentum", 0.9))

    def ch(n: int) -> int:
        return max(8, round(n * width / 8) * 8)

    def conv_bn(x: Any, filters: int, kernel: int, stride: int, name: str) -> Any:
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
        return layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)

    def block(x: Any, filters: int, name: str, down: bool) -> Any:
        """ResNet basic block (two 3x3 convs), stride 2 when ``down``, projected shortcut."""
        stride = 2 if down else 1
        y = layers.Activation("relu", name=f"{name}_relu1")(conv_bn(x, filters, 3, stride, f"{name}_a"))
        y = conv_bn(y, filters, 3, 1, f"{name}_b")
        shortcut = x
        if down or x.shape[-1] != filters:
            shortcut = conv_bn(x, filters, 1, stride, f"{name}_proj")
        return layers.Add(name=f"{name}_add")([y, shortcut])

    inp = keras.Input((size, size, channels), name="image")
    x = conv_bn(inp, ch(32), 5, 2, "stem")  # size / 2
    x = layers.Activation("relu", name="stem_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)  # size / 4
    x = block(x, ch(32), "s1", down=False)
    x = layers.Activation("relu", name="s1_out")(x)
    x = block(x, ch(64), "s2", down=True)  # size / 8
    x = layers.Activation("relu", name="s2_out")(x)
    x = block(x, ch(128), "s3", down=True)  # size / 16
    x = layers.Activation("relu", name="s3_out")(x)
    x = block(x, ch(128), "s3b", down=False)
    x = layers.Activation("relu", name="s3b_out")(x)
    x = block(x, ch(256), "s4", down=False)
    x = layers.Activation("relu", name=GRADCAM_LAYER)(x)  # size / 16: 12x12 at 192 px, 14x14 at 224
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    # float32 head under any policy: a bfloat16 softmax/sigmoid (8-bit mantissa) would round
    # the probabilities the loss sees during mixed-precision training
    out = layers.Dense(n_out, activation=activation, name="predictions", dtype="float32")(x)
    return keras.Model(inp, out, name="compact_resnet")


def backbone_weights(opts: dict[str, Any]) -> str | None:
    """The local pretrained-backbone file named by ``opts["backbone_weights"]``, or None.

    Only an existing file is accepted (never ``"imagenet"``, which would make Keras
    download), so a typo fails here with the path rather than deep inside Keras.
    """
    value = opts.get("backbone_weights")
    if value is None or value == "":
        return None
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise ValueError(
            f"backbone weights {str(value)!r} is not a file: give the path of a local DenseNet201 "
            "weights file without the top (for example densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5); "
            "nothing is downloaded"
        )
    return str(path)


def _densenet201_base(size: int, channels: int, opts: dict[str, Any]) -> Any:
    import keras

    return keras.applications.DenseNet201(
        include_top=False, weights=backbone_weights(opts), input_shape=(size, size, channels)
    )


def _densenet201(size: int, channels: int, n_out: int, activation: str, opts: dict[str, Any]) -> Any:
    import keras
    from keras import layers

    base = _densenet201_base(size, channels, opts)
    x = layers.GlobalAveragePooling2D(name="gap")(base.output)
    x = layers.Dense(256, activation="relu", name="fc256")(x)
    x = layers.Dropout(float(opts.get("dropout", 0.5)), name="dropout")(x)
    out = layers.Dense(n_out, activation=activation, name="predictions", dtype="float32")(x)
    return keras.Model(base.input, out, name="densenet201_head")


def _densenet201_cut(size: int, channels: int, n_out: int, activation: str, opts: dict[str, Any]) -> Any:
    import keras
    from keras import layers

    base = _densenet201_base(size, channels, opts)
    cut = base.get_layer("conv5_block16_0_bn").output
    x = layers.Flatten(name="flatten")(cut)
    x = layers.Dense(256, activation="relu", name="fc256")(x)
    x = layers.Dropout(float(opts.get("dropout", 0.2)), name="dropout")(x)
    out = layers.Dense(n_out, activation=activation, name="predictions", dtype="float32")(x)
    return keras.Model(base.input, out, name="densenet201_cut")


def _brain_cnn(size: int, channels: int, n_out: int, activation: str, opts: dict[str, Any]) -> Any:
    import keras
    from keras import layers

    inp = keras.Input((size, size, channels), name="image")
    x = inp
    for i, filters in enumerate((64, 512, 256, 128)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(256, activation="relu", name="fc256")(x)
    x = layers.Dense(128, activation="relu", name="fc128")(x)
    out = layers.Dense(n_out, activation=activation, name="predictions", dtype="float32")(x)
    return keras.Model(inp, out, name="brain_cnn")


def _small_cnn(size: int, channels: int, n_out: int, activation: str, opts: dict[str, Any]) -> Any:
    import keras
    from keras import layers

    inp = keras.Input((size, size, channels), name="image")
    x = inp
    for i, filters in enumerate((32, 64, 128, 128)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i + 1}")(x)
        x = layers.BatchNormalization(momentum=float(opts.get("bn_momentum", 0.9)), name=f"bn{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.Conv2D(128, 3, padding="same", activation="relu", name=GRADCAM_LAYER)(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(float(opts.get("dropout", 0.3)), name="dropout")(x)
    out = layers.Dense(n_out, activation=activation, name="predictions", dtype="float32")(x)
    return keras.Model(inp, out, name="small_cnn")


def _efficientnet_lite0(size: int, channels: int, n_out: int, activation: str, opts: dict[str, Any]) -> Any:
    import keras
    from keras import layers

    from inference.efficientnet_lite import LITE0_BLOCKS, build_backbone, copy_weights_by_name

    stages = LITE0_BLOCKS[: int(opts.get("lite_stages", len(LITE0_BLOCKS)))]
    base = build_backbone(
        size,
        channels,
        width=float(opts.get("lite_width", 1.0)),
        stages=stages,
        drop_connect=float(opts.get("drop_connect", 0.2)),
        bn_momentum=float(opts.get("bn_momentum", 0.99)),
        head_conv=bool(opts.get("lite_head", True)),
    )
    weights = opts.get("backbone_weights")
    if weights:
        # layer by layer, by name: the file is the bare ported network, ours also has
        # stochastic-depth dropouts and the Grad-CAM alias, which carry no weights
        src = keras.saving.load_model(str(weights), compile=False, safe_mode=True)
        copy_weights_by_name(src, base)
    x = layers.GlobalAveragePooling2D(name="gap")(base.output)
    x = layers.Dropout(float(opts.get("dropout", 0.2)), name="dropout")(x)
    out = layers.Dense(n_out, activation=activation, name="predictions", dtype="float32")(x)
    return keras.Model(base.input, out, name="efficientnet_lite0")


@dataclass(frozen=True)
class Architecture:
    """One selectable network: its builder, the layer Grad-CAM explains by default,
    whether ``options.backbone_weights`` applies to it and, for networks meant to start
    from pretrained weights, the backbone :mod:`inference.backbones` imports for it."""

    build: Builder
    gradcam_layer: str
    pretrainable: bool = False
    default_backbone: str | None = None


ARCHITECTURES: dict[str, Architecture] = {
    "compact_resnet": Architecture(_compact_resnet, GRADCAM_LAYER),
    "densenet201": Architecture(_densenet201, "conv5_block32_concat", pretrainable=True),
    "densenet201_cut": Architecture(_densenet201_cut, "conv5_block16_0_bn", pretrainable=True),
    "brain_cnn": Architecture(_brain_cnn, "conv4"),
    "small_cnn": Architecture(_small_cnn, GRADCAM_LAYER),
    "efficientnet_lite0": Architecture(
        _efficientnet_lite0, GRADCAM_LAYER, pretrainable=True, default_backbone="efficientnet_lite0"
    ),
}


def build_model(spec: ModelSpec, architecture: str | None = None, size: int | None = None) -> Any:
    """Build the Keras model for ``spec`` (uncompiled; random weights, except a DenseNet201
    backbone named by ``options.backbone_weights``).

    ``architecture`` defaults to ``spec.options["architecture"]`` and then ``compact_resnet``;
    ``size`` defaults to ``spec.input.size``. Extra ``spec.options`` (``width``, ``dropout``,
    ``l2``, ``backbone_weights``) are passed to the builder.
    """
    name = architecture or str(spec.options.get("architecture", "compact_resnet"))
    try:
        arch = ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}") from None
    if spec.options.get("backbone_weights") and not arch.pretrainable:
        pretrainable = sorted(k for k, a in ARCHITECTURES.items() if a.pretrainable)
        raise ValueError(f"backbone weights apply to {pretrainable}, not to {name!r}")
    side = size or spec.input.size
    return arch.build(side, spec.input.channels, spec.n_outputs, head_activation(spec.head), dict(spec.options))
