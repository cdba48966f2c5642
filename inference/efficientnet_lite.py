"""EfficientNet-Lite in Keras 3, laid out so ImageNet weights from PyTorch port onto it exactly.

EfficientNet-Lite (Tan & Le; the TensorFlow "lite" variants) is EfficientNet-B0's layout
without squeeze-excitation, with ReLU6 instead of swish, a fixed 32-channel stem and
1280-channel head, BatchNorm epsilon 1e-3 and TensorFlow "SAME" padding (which Keras'
``padding="same"`` reproduces: the extra pixel of an even-sized stride-2 conv goes after).
It expects ``(pixels - 127) / 128`` on 0-255 pixels, i.e. a spec input of
``scale: 0.0078125, offset: -0.9921875``.

This module only builds the network and maps a PyTorch state dict (lukemelas
EfficientNet-PyTorch naming: ``_conv_stem``, ``_blocks.N._depthwise_conv``, ...) onto it.
It imports neither torch nor the weights package: reading the ``.pth`` file is the training
package's job (:mod:`inference.backbones`), so serving never needs them.

Layer names (``N`` = 0-based block index, as in the PyTorch ``_blocks.N``):
``stem_conv/bn/relu``, ``blockN_expand_conv/bn/relu`` (not in block 0, expand ratio 1),
``blockN_dwconv/bn/relu``, ``blockN_project_conv/bn``, ``blockN_add`` (blocks with a
residual), ``head_conv/bn/relu`` (7x7x1280 at 224 px). ``gradcam_features`` is an identity
layer on the last stride-16 block's output (``block10_add``: 14x14x112 at 224 px): the map
Grad-CAM explains, twice as fine as the 7x7 head.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "GRADCAM_LAYER",
    "LITE0_BLOCKS",
    "BlockArgs",
    "block_layout",
    "build_backbone",
    "copy_weights_by_name",
    "load_torch_state_dict",
    "torch_key_map",
]

GRADCAM_LAYER = "gradcam_features"
BN_EPSILON = 1e-3


@dataclass(frozen=True)
class BlockArgs:
    """One stage of MBConv blocks: repeats, kernel, first stride, expand ratio, channels."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


# efficientnet/lite/efficientnet_lite_builder.py: r1_k3_s11_e1_i32_o16, r2_k3_s22_e6_i16_o24, ...
LITE0_BLOCKS = (
    BlockArgs(1, 3, 1, 1, 32, 16),
    BlockArgs(2, 3, 2, 6, 16, 24),
    BlockArgs(2, 5, 2, 6, 24, 40),
    BlockArgs(3, 3, 2, 6, 40, 80),
    BlockArgs(3, 5, 1, 6, 80, 112),
    BlockArgs(4, 5, 2, 6, 112, 192),
    BlockArgs(1, 3, 1, 6, 192, 320),
)


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding (to a multiple of 8, never more than 10 % down)."""
    if width == 1.0:
        return filters
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def block_layout(width: float = 1.0, stages: tuple[BlockArgs, ...] = LITE0_BLOCKS) -> list[BlockArgs]:
    """One :class:`BlockArgs` per block (repeats expanded, later repeats stride 1)."""
    out: list[BlockArgs] = []
    for stage in stages:
        fin = _round_filters(stage.filters_in, width) if out else 32
        fout = _round_filters(stage.filters_out, width)
        for r in range(stage.repeats):
            out.append(BlockArgs(1, stage.kernel, stage.stride if r == 0 else 1, stage.expand, fin, fout))
            fin = fout
    return out


def build_backbone(
    size: int | None = 224,
    channels: int = 3,
    *,
    width: float = 1.0,
    stages: tuple[BlockArgs, ...] = LITE0_BLOCKS,
    drop_connect: float = 0.0,
    bn_momentum: float = 0.99,
    head_conv: bool = True,
    include_top: bool = False,
    classes: int = 1000,
    name: str = "efficientnet_lite0",
) -> Any:
    """The EfficientNet-Lite network as a functional Keras model.

    Without ``include_top`` it ends at ``head_relu`` (the 1280-channel map before pooling);
    with it, global average pooling and the ``predictions`` dense layer give ImageNet logits
    (no softmax, as the PyTorch ``_fc``). ``drop_connect`` is the stochastic-depth rate of the
    last block (scaled linearly by block index, as upstream); it is only active in training.
    ``width`` < 1 and shorter ``stages`` build the small networks the tests use; without
    ``head_conv`` the network ends at its last block (a cut backbone: for ``stages[:6]`` the
    7x7x192 output of ``block14_add``).
    """
    import keras
    from keras import layers

    blocks = block_layout(width, stages)
    inp = keras.Input((size, size, channels), name="image")

    def bn(x: Any, name: str) -> Any:
        return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=bn_momentum, name=name)(x)

    # the last block whose output is at stride <= 16 gets the Grad-CAM alias after it
    stride, cam_after = 2, 0
    for i, b in enumerate(blocks):
        stride *= b.stride
        if stride <= 16:
            cam_after = i
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inp)
    x = layers.ReLU(6.0, name="stem_relu")(bn(x, "stem_bn"))
    for i, b in enumerate(blocks):
        p = f"block{i}"
        y = x
        mid = b.filters_in * b.expand
        if b.expand != 1:
            y = layers.Conv2D(mid, 1, padding="same", use_bias=False, name=f"{p}_expand_conv")(y)
            y = layers.ReLU(6.0, name=f"{p}_expand_relu")(bn(y, f"{p}_expand_bn"))
        y = layers.DepthwiseConv2D(b.kernel, strides=b.stride, padding="same", use_bias=False, name=f"{p}_dwconv")(y)
        y = layers.ReLU(6.0, name=f"{p}_relu")(bn(y, f"{p}_bn"))
        y = layers.Conv2D(b.filters_out, 1, padding="same", use_bias=False, name=f"{p}_project_conv")(y)
        y = bn(y, f"{p}_project_bn")
        if b.stride == 1 and b.filters_in == b.filters_out:
            rate = drop_connect * i / len(blocks)
            if rate > 0:
                # stochastic depth: drop the whole residual branch per sample (noise_shape)
                y = layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=f"{p}_drop")(y)
            y = layers.Add(name=f"{p}_add")([y, x])
        x = y
        if i == cam_after:
            x = layers.Identity(name=GRADCAM_LAYER)(x)
    if head_conv:
        x = layers.Conv2D(1280, 1, padding="same", use_bias=False, name="head_conv")(x)
        x = layers.ReLU(6.0, name="head_relu")(bn(x, "head_bn"))
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(classes, name="predictions")(x)
    return keras.Model(inp, x, name=name)


def torch_key_map(n_blocks: int, include_top: bool = False) -> dict[str, tuple[str, str]]:
    """PyTorch state-dict prefix -> ``(Keras layer name, kind)``, kind ``conv``, ``dw``, ``bn`` or ``fc``."""
    m: dict[str, tuple[str, str]] = {"_conv_stem": ("stem_conv", "conv"), "_bn0": ("stem_bn", "bn")}
    for i in range(n_blocks):
        t, k = f"_blocks.{i}", f"block{i}"
        if i > 0:  # block 0 has expand ratio 1 in every Lite variant
            m[f"{t}._expand_conv"] = (f"{k}_expand_conv", "conv")
            m[f"{t}._bn0"] = (f"{k}_expand_bn", "bn")
        m[f"{t}._depthwise_conv"] = (f"{k}_dwconv", "dw")
        m[f"{t}._bn1"] = (f"{k}_bn", "bn")
        m[f"{t}._project_conv"] = (f"{k}_project_conv", "conv")
        m[f"{t}._bn2"] = (f"{k}_project_bn", "bn")
    m["_conv_head"] = ("head_conv", "conv")
    m["_bn1"] = ("head_bn", "bn")
    if include_top:
        m["_fc"] = ("predictions", "fc")
    return m


def load_torch_state_dict(model: Any, state: Mapping[str, np.ndarray]) -> int:
    """Copy a PyTorch EfficientNet-Lite state dict (numpy arrays) into ``model``'s layers.

    Every tensor of the state dict that the model has a layer for must fit it exactly, and
    every mapped layer must be found: a mismatch raises ``ValueError`` naming the key. The
    ``_fc`` tensors are used only when the model has a ``predictions`` layer. Returns the
    number of tensors copied.
    """
    names = {layer.name for layer in model.layers}
    n_blocks = sum(1 for n in names if n.endswith("_dwconv"))
    mapping = torch_key_map(n_blocks, include_top="predictions" in names)
    if "head_conv" not in names:  # a cut backbone: only the blocks it has
        mapping = {k: v for k, v in mapping.items() if not v[0].startswith("head_")}
    used = 0
    for prefix, (layer_name, kind) in mapping.items():
        if layer_name not in names:
            raise ValueError(f"the Keras model has no layer {layer_name!r} for {prefix}")
        layer = model.get_layer(layer_name)

        def get(suffix: str, prefix: str = prefix) -> np.ndarray:
            key = f"{prefix}.{suffix}"
            if key not in state:
                raise ValueError(f"the state dict has no {key}")
            return np.asarray(state[key], np.float32)

        if kind == "conv":  # (out, in, kh, kw) -> (kh, kw, in, out)
            values = [get("weight").transpose(2, 3, 1, 0)]
        elif kind == "dw":  # (C, 1, kh, kw) -> (kh, kw, C, 1)
            values = [get("weight").transpose(2, 3, 0, 1)]
        elif kind == "bn":
            values = [get("weight"), get("bias"), get("running_mean"), get("running_var")]
        else:  # fc: (out, in) -> (in, out)
            values = [get("weight").T, get("bias")]
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [v.shape for v in values] != expected:
            raise ValueError(f"{prefix}: shapes {[v.shape for v in values]} do not fit {layer_name} {expected}")
        layer.set_weights(values)
        used += len(values)
    return used


def copy_weights_by_name(src: Any, dst: Any) -> int:
    """Give every weighted layer of ``dst`` the weights of the layer of the same name in ``src``.

    Every weighted layer of ``dst`` must find its counterpart in ``src`` with the same shapes
    (never a silent partial load: a network that does not fit the file is an error); ``src``
    may have more layers (a cut network takes only the blocks it has). Returns the number of
    layers copied.
    """
    names = {layer.name for layer in src.layers}
    n = 0
    for layer in dst.layers:
        shapes = [tuple(w.shape) for w in layer.get_weights()]
        if not shapes:
            continue
        if layer.name not in names:
            raise ValueError(f"layer {layer.name!r} of {dst.name} has no counterpart in the backbone {src.name}")
        weights = src.get_layer(layer.name).get_weights()
        if [w.shape for w in weights] != shapes:
            raise ValueError(f"backbone layer {layer.name!r}: shapes {[w.shape for w in weights]} != {shapes}")
        layer.set_weights(weights)
        n += 1
    return n
