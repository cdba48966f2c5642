"""Inference overhead benchmark for a DenseNet201-size Keras model (random weights).

Prints, in one run, the raw model forward time, the fused forward+Grad-CAM time, eager and
``model.predict`` for comparison, and the end-to-end REST and ``gradio_client`` times, each
as a ratio to the raw compiled forward measured in the same run (this machine is noisy,
so only same-run ratios mean anything).

    python bench/bench_inference.py [--repeats 20] [--size 224]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (
    auth_headers,
    build_densenet,
    pct,
    start_doctorai,
    stop,
    timed,
    wait_http,
    write_registry,
)

log = logging.getLogger("bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--port", type=int, default=7391)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import httpx
    from PIL import Image

    from inference.backends.keras_image import KerasImageBackend, load_keras_model
    from inference.registry import Registry

    work = Path(tempfile.mkdtemp(prefix="doctorai-bench-"))
    model_dir = work / "models"
    model_dir.mkdir()
    log.info("building DenseNet201-size model (random weights) in %s", work)
    build_densenet(args.size, model_dir / "bench.keras")
    registry_file = work / "models.yaml"
    write_registry(registry_file, args.size)
    reg = Registry.from_yaml(registry_file)

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)
    png = work / "input.png"
    Image.fromarray(img).save(png)

    model = load_keras_model(model_dir / "bench.keras")
    backend = KerasImageBackend(reg["bench"], model, "cpu")
    backend.warm_up()
    x = backend.preprocess([img])
    n = args.repeats
    raw = timed(lambda: backend.explainer.forward(x), n)
    fused = timed(lambda: backend.explainer.forward_explain(x), n)
    eager = timed(lambda: model(x, training=False), max(3, n // 4), warmup=1)
    predict = timed(lambda: model.predict(x, verbose=0), max(3, n // 4), warmup=1)

    proc = start_doctorai(
        work, model_dir, registry_file, args.port, DOCTORAI_PRELOAD="bench", DOCTORAI_CACHE_ENABLED="false"
    )
    try:
        wait_http(f"http://127.0.0.1:{args.port}/api/ready", 300)
        url = f"http://127.0.0.1:{args.port}"
        data = png.read_bytes()
        headers = auth_headers(url)
        with httpx.Client(timeout=120, headers=headers) as client:

            def rest() -> None:
                r = client.post(f"{url}/api/predict/bench", files={"file": ("x.png", data)}, params={"explain": "true"})
                r.raise_for_status()

            rest_t = timed(rest, n)
        from gradio_client import Client, handle_file

        gc = Client(url, verbose=False, headers=headers)
        grad_t = timed(lambda: gc.predict(handle_file(str(png)), 0.45, True, api_name="/predict_bench"), n)
    finally:
        stop(proc)

    base = statistics.median(raw)
    rows = [
        ("raw compiled forward (tf.function)", raw),
        ("fused forward + Grad-CAM (one pass)", fused),
        ("eager model(x)", eager),
        ("model.predict", predict),
        ("REST end-to-end (explain=true)", rest_t),
        ("gradio_client end-to-end", grad_t),
    ]
    print(f"\nDenseNet201-size model, {args.size}px, batch 1, {n} repeats, CPU x{os.cpu_count()}")
    print(f"{'measurement':40s} {'p50 ms':>9s} {'p95 ms':>9s} {'x raw p50':>10s}")
    for name, xs in rows:
        print(f"{name:40s} {pct(xs, 50):9.1f} {pct(xs, 95):9.1f} {pct(xs, 50) / base:10.2f}")


if __name__ == "__main__":
    main()
