"""Shared pieces of the benchmarks: the DenseNet201-size model, servers, timers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    """Wall times in ms of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q))


def build_densenet(size: int, path: Path, n_classes: int = 5) -> None:
    """DenseNet201 backbone nested in a classifier (random weights): the original lung/colon
    and monkeypox shape, and the harder case for Grad-CAM."""
    import keras

    base = keras.applications.DenseNet201(include_top=False, weights=None, input_shape=(size, size, 3))
    inp = keras.Input((size, size, 3))
    x = base(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(256, activation="relu")(x)
    out = keras.layers.Dense(n_classes, activation="softmax")(x)
    keras.Model(inp, out).save(path)


def write_registry(path: Path, size: int, n_classes: int = 5) -> None:
    spec = {
        "id": "bench",
        "display_name": "Bench",
        "modality": "benchmark",
        "backend": "keras_image",
        "head": "softmax",
        "classes": [{"id": f"c{i}", "name": f"Class {i}"} for i in range(n_classes)],
        "input": {"size": size, "channels": 3},
        "weights": {"file": "bench.keras"},
        "version": "bench",
    }
    path.write_text(yaml.safe_dump({"models": [spec]}))


# The benchmarked DoctorAI servers run with these credentials (the app is locked by default):
# the probe token reads /api/ready like a Kubernetes probe; analyses use the admin's JWT.
BENCH_PASSWORD = "bench-admin-password"
PROBE_TOKEN = "bench-probe-token"
AUTH_ENV = {
    "DOCTORAI_ADMIN_PASSWORD": BENCH_PASSWORD,
    "DOCTORAI_METRICS_TOKEN": PROBE_TOKEN,
    "DOCTORAI_ANALYSES_PER_MINUTE": "0",  # the load generator is one user
}


def auth_headers(url: str) -> dict[str, str]:
    """``Authorization`` header of the benchmark admin on a DoctorAI server at ``url``."""
    import httpx

    r = httpx.post(f"{url}/api/token", data={"username": "admin", "password": BENCH_PASSWORD}, timeout=60)
    if r.status_code in (404, 405):  # the naive baseline app has no login
        return {}
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def wait_http(url: str, timeout_s: float, ok: tuple[int, ...] = (200,)) -> float:
    """Seconds until ``url`` answers one of ``ok``; raises after ``timeout_s``."""
    t0 = time.perf_counter()
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {PROBE_TOKEN}"})
    while time.perf_counter() - t0 < timeout_s:
        try:
            with urllib.request.urlopen(request, timeout=2) as r:
                if r.status in ok:
                    return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


def start_doctorai(
    work: Path, model_dir: Path, registry: Path | None, port: int, **env: str
) -> subprocess.Popen[bytes]:
    full = {
        **os.environ,
        "DOCTORAI_PORT": str(port),
        "DOCTORAI_DATA_DIR": str(work / f"data-{port}"),
        "DOCTORAI_MODEL_DIR": str(model_dir),
        **({"DOCTORAI_REGISTRY_FILE": str(registry)} if registry else {}),
        **AUTH_ENV,
        **env,
    }
    log = (work / f"server-{port}.log").open("w")
    return subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=full, stdout=log, stderr=subprocess.STDOUT)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
