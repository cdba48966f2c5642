"""Shared fixtures: tiny random Keras models and a registry/settings pointing at them.

Nothing here downloads anything; every model is built in milliseconds with random weights.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from settings import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINY = 32


def build_flat(n_out: int, activation: str, size: int = TINY, seed: int = 0) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(n_out, activation=activation, name="head")(x)
    return keras.Model(inp, out, name="flat")


def build_nested(n_out: int, activation: str, size: int = TINY, seed: int = 0) -> Any:
    """A backbone model inside a Functional model: the "graph disconnected" case."""
    import keras

    keras.utils.set_random_seed(seed)
    backbone = keras.Sequential(
        [
            keras.Input((size, size, 3)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="b_conv1"),
            keras.layers.MaxPooling2D(name="b_pool1"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="b_conv2"),
        ],
        name="backbone",
    )
    inp = keras.Input((size, size, 3), name="image")
    x = backbone(inp)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(n_out, activation=activation, name="head")(x)
    return keras.Model(inp, out, name="nested")


def _spec(model_id: str, head: str, classes: list[str], weights: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "display_name": model_id.replace("_", " ").title(),
        "modality": "test image",
        "backend": "keras_image",
        "head": head,
        "classes": [{"id": c, "name": c.title(), "description": f"class {c}"} for c in classes],
        "input": {"size": TINY, "channels": 3, "scale": 1 / 255, "offset": 0.0},
        "weights": {"file": weights},
        "version": "1.0.0",
        "card": {"summary": "tiny random test model", "metrics": "none (random weights)"},
        **extra,
    }


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("models")
    build_flat(4, "softmax").save(d / "softmax4.keras")
    build_flat(1, "sigmoid").save(d / "single.keras")
    build_flat(2, "sigmoid").save(d / "multi.keras")
    build_nested(3, "softmax").save(d / "nested.keras")
    build_flat(4, "softmax").save(d / "legacy.h5")
    return d


@pytest.fixture(scope="session")
def tiny_registry_file(tiny_model_dir: Path) -> Path:
    specs = [
        _spec("tumor", "softmax", ["glioma", "meningioma", "notumor", "pituitary"], "softmax4.keras"),
        _spec("xray", "sigmoid_single", ["NORMAL", "PNEUMONIA"], "single.keras", positive_class="PNEUMONIA"),
        _spec("pox", "sigmoid_multi", ["Monkeypox", "Others"], "multi.keras"),
        _spec("nested", "softmax", ["a", "b", "c"], "nested.keras"),
        _spec("legacy", "softmax", ["w", "x", "y", "z"], "legacy.h5"),
        _spec("absent", "softmax", ["p", "q"], "absent.keras"),
    ]
    path = tiny_model_dir / "models.yaml"
    path.write_text(yaml.safe_dump({"models": specs}, sort_keys=False))
    return path


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path, tiny_registry_file: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        model_dir=tiny_model_dir,
        registry_file=tiny_registry_file,
        device="cpu",
        max_upload_mb=2.0,
        max_pixels=4_000_000,
    )


@pytest.fixture
def png_bytes() -> bytes:
    return image_bytes(np.random.default_rng(1).integers(0, 255, (64, 80, 3), dtype=np.uint8), "PNG")


def image_bytes(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def client(settings: Settings) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def live_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_registry_file: Path
) -> Iterator[str]:
    """`python app.py` in a subprocess on a free loopback port, configured by DOCTORAI_* env."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    data = tmp_path_factory.mktemp("live-data")
    env = {
        **os.environ,
        "DOCTORAI_PORT": str(port),
        "DOCTORAI_HOST": "127.0.0.1",
        "DOCTORAI_DATA_DIR": str(data),
        "DOCTORAI_MODEL_DIR": str(tiny_model_dir),
        "DOCTORAI_REGISTRY_FILE": str(tiny_registry_file),
        "DOCTORAI_DEVICE": "cpu",
    }
    log = (data / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("server did not start:\n" + (data / "server.log").read_text()[-3000:])
        time.sleep(0.3)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
