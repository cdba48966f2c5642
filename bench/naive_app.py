"""The typical Spaces approach, for comparison only: gr.Interface + model.predict + an eager
GradientTape Grad-CAM rebuilt per request. Started by bench_load.py on its own port.

    python bench/naive_app.py MODEL.keras PORT
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gradio as gr
import keras
import numpy as np
import tensorflow as tf
from PIL import Image


def main() -> None:
    model_path, port = sys.argv[1], int(sys.argv[2])
    model = keras.saving.load_model(model_path, compile=False)
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    last_conv = [layer for layer in backbone.layers if len(layer.output.shape) == 4][-1]
    size = model.inputs[0].shape[1]
    # Typical code: a sub-model from the backbone, then the head layers applied by hand.
    feat_model = keras.Model(backbone.inputs, [last_conv.output, backbone.output])
    head = [layer for layer in model.layers[model.layers.index(backbone) + 1 :]]

    def predict(img: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
        x = np.asarray(Image.fromarray(img).convert("RGB").resize((size, size)), np.float32)[None] / 255.0
        probs = model.predict(x, verbose=0)[0]
        with tf.GradientTape() as tape:
            conv, out = feat_model(x)
            for layer in head:
                out = layer(out)
            score = out[:, int(np.argmax(probs))]
        grads = tape.gradient(score, conv)
        w = tf.reduce_mean(grads, axis=(1, 2))
        cam = tf.nn.relu(tf.reduce_sum(conv * w[:, None, None, :], axis=-1))[0].numpy()
        cam = cam / (cam.max() + 1e-8)
        heat = np.asarray(Image.fromarray((cam * 255).astype(np.uint8)).resize(img.shape[1::-1]))
        overlay = (img * 0.6 + heat[..., None] * 0.4).astype(np.uint8)
        return {f"c{i}": float(p) for i, p in enumerate(probs)}, overlay

    demo = gr.Interface(predict, gr.Image(type="numpy"), [gr.Label(), gr.Image()], api_name="predict")
    demo.launch(server_name="127.0.0.1", server_port=port, ssr_mode=False)


if __name__ == "__main__":
    main()
