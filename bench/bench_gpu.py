"""GPU check of the Keras backend: device policy, memory growth, fused forward+Grad-CAM
timings, and torch sharing the same card. Runs on CPU too (then it says so).

    python bench/bench_gpu.py [--size 224]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import build_densenet, pct, timed, write_registry

log = logging.getLogger("bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from inference.backends.keras_image import KerasImageBackend, configure_tensorflow, load_keras_model
    from inference.registry import Registry

    device = configure_tensorflow("auto")
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    growth = [tf.config.experimental.get_memory_growth(g) for g in gpus]
    work = Path(tempfile.mkdtemp(prefix="doctorai-gpu-"))
    build_densenet(args.size, work / "bench.keras")
    write_registry(work / "models.yaml", args.size)
    spec = Registry.from_yaml(work / "models.yaml")["bench"]
    backend = KerasImageBackend(spec, load_keras_model(work / "bench.keras"), device)
    backend.warm_up()
    x1 = backend.preprocess([np.zeros((args.size, args.size, 3), np.uint8)])
    x8 = np.repeat(x1, 8, axis=0)
    rows = {
        "forward, batch 1": timed(lambda: backend.explainer.forward(x1), args.repeats, warmup=5),
        "fused forward+Grad-CAM, batch 1": timed(lambda: backend.explainer.forward_explain(x1), args.repeats, warmup=5),
        "fused forward+Grad-CAM, batch 8": timed(lambda: backend.explainer.forward_explain(x8), args.repeats, warmup=5),
    }
    tf_mem = tf.config.experimental.get_memory_info("GPU:0")["current"] / 2**20 if gpus else 0.0
    shared = "n/a"
    try:
        import torch

        if torch.cuda.is_available():
            t = torch.ones((1024, 1024, 64), device="cuda")  # 256 MiB next to TensorFlow
            shared = f"yes: torch allocated {t.numel() * 4 / 2**20:.0f} MiB on {torch.cuda.get_device_name(0)}"
    except ImportError:
        shared = "torch not installed"
    print(f"\ndevice policy auto -> {device}; GPUs {[g.name for g in gpus]}; memory growth {growth}")
    print(f"TensorFlow GPU memory in use after warm-up: {tf_mem:.0f} MiB; torch on the same card: {shared}")
    print(f"{'DenseNet201-size, ' + str(args.size) + ' px':40s} {'p50 ms':>8s} {'p95 ms':>8s}")
    for name, xs in rows.items():
        print(f"{name:40s} {pct(xs, 50):8.2f} {pct(xs, 95):8.2f}")


if __name__ == "__main__":
    main()
