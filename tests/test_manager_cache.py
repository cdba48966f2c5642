"""Model manager (lazy, once, states, budget) and the analysis cache."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from inference.backends.base import Backend, DevicePolicy, Prediction
from inference.cache import PredictionCache, decode_prediction, encode_prediction
from inference.errors import ModelLoadFailed, ModelNotInstalled
from inference.manager import ModelManager, ModelState, default_loaders
from inference.registry import ModelSpec, Registry
from inference.service import Analyzer
from tests.conftest import image_bytes


class Counting:
    """Wraps the real Keras loader: counts loads and forward calls, can be slowed down."""

    def __init__(self, delay: float = 0.0) -> None:
        self.loads = 0
        self.forwards = 0
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self, spec: ModelSpec, path: Path, device: DevicePolicy) -> Backend:
        with self._lock:
            self.loads += 1
        time.sleep(self.delay)
        backend = default_loaders()["keras_image"](spec, path, device)
        original = backend.forward

        def forward(batch: np.ndarray, explain: bool) -> tuple[np.ndarray, np.ndarray | None]:
            with self._lock:
                self.forwards += 1
            return original(batch, explain)

        backend.forward = forward  # type: ignore[method-assign]
        return backend


def make_manager(registry_file: Path, model_dir: Path, loader: Counting, memory_budget_bytes: int = 0) -> ModelManager:
    return ModelManager(
        Registry.from_yaml(registry_file),
        model_dir,
        device="cpu",
        loaders={"keras_image": loader},
        memory_budget_bytes=memory_budget_bytes,
    )


def test_states_before_and_after_loading(tiny_registry_file: Path, tiny_model_dir: Path) -> None:
    m = make_manager(tiny_registry_file, tiny_model_dir, Counting())
    st = m.status()
    assert st["tumor"] == {"state": "not_loaded", "version": "1.0.0"}
    assert st["absent"]["state"] == "not_installed"
    assert "put absent.keras in" in st["absent"]["detail"]
    m.get("tumor")
    assert m.state("tumor") is ModelState.READY
    assert m.status()["tumor"]["load_seconds"] > 0
    with pytest.raises(ModelNotInstalled, match=r"put absent\.keras in"):
        m.get("absent")


def test_concurrent_first_requests_load_once(tiny_registry_file: Path, tiny_model_dir: Path) -> None:
    loader = Counting(delay=0.3)
    m = make_manager(tiny_registry_file, tiny_model_dir, loader)
    seen: list[Backend] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        seen.append(m.get("tumor"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loader.loads == 1
    assert len(seen) == 8
    assert all(b is seen[0] for b in seen)
    assert m.load_count("tumor") == 1


def test_a_broken_weights_file_fails_cleanly_and_reports_why(tmp_path: Path, tiny_registry_file: Path) -> None:
    (tmp_path / "softmax4.keras").write_bytes(b"this is not a keras archive")
    m = ModelManager(Registry.from_yaml(tiny_registry_file), tmp_path, device="cpu")
    with pytest.raises(ModelLoadFailed, match=r"could not load softmax4\.keras"):
        m.get("tumor")
    st = m.status()["tumor"]
    assert st["state"] == "failed"
    assert "softmax4.keras" in st["error"]


def test_checksum_mismatch_refuses_the_file(tmp_path: Path, tiny_model_dir: Path) -> None:
    import yaml

    raw = yaml.safe_load((tiny_model_dir / "models.yaml").read_text())
    raw["models"][0]["weights"]["sha256"] = "0" * 64
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(raw))
    m = ModelManager(Registry.from_yaml(tmp_path / "models.yaml"), tiny_model_dir, device="cpu")
    with pytest.raises(ModelLoadFailed, match="does not match the sha256"):
        m.get("tumor")
    assert m.state("tumor") is ModelState.FAILED


def test_legacy_h5_loads(tiny_registry_file: Path, tiny_model_dir: Path) -> None:
    m = ModelManager(Registry.from_yaml(tiny_registry_file), tiny_model_dir, device="cpu")
    out = m.get("legacy").predict([np.zeros((40, 40, 3), np.uint8)])
    assert set(out.predictions[0].probabilities) == {"w", "x", "y", "z"}


def test_lru_unload_past_the_memory_budget(tiny_registry_file: Path, tiny_model_dir: Path) -> None:
    loader = Counting()
    m = make_manager(tiny_registry_file, tiny_model_dir, loader, memory_budget_bytes=1)
    m.get("tumor")
    m.get("xray")
    assert m.loaded() == ["xray"]  # tumor was least recently used and over budget
    assert m.state("tumor") is ModelState.NOT_LOADED
    m.get("tumor")
    assert loader.loads == 3
    assert m.loaded() == ["tumor"]


def test_preload_in_background(tiny_registry_file: Path, tiny_model_dir: Path) -> None:
    m = make_manager(tiny_registry_file, tiny_model_dir, Counting())
    m.preload(["tumor", "absent", "xray"], background=False)
    assert sorted(m.loaded()) == ["tumor", "xray"]
    assert m.state("absent") is ModelState.NOT_INSTALLED


def test_cache_hit_returns_the_same_result_without_calling_the_model(
    tiny_registry_file: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    loader = Counting()
    m = make_manager(tiny_registry_file, tiny_model_dir, loader)
    cache = PredictionCache(tmp_path / "cache", size_limit_bytes=2**24, ttl_s=60)
    an = Analyzer(m, cache, max_bytes=2**22, max_pixels=10**6)
    data = image_bytes(np.random.default_rng(3).integers(0, 255, (50, 60, 3), dtype=np.uint8))
    first = an.analyze("tumor", data, explain=True)
    second = an.analyze("tumor", data, explain=True)
    assert not first.cached
    assert second.cached
    assert loader.forwards == 1
    assert second.probabilities == pytest.approx(first.probabilities, abs=1e-9)
    assert second.label == first.label
    assert first.prediction.explanation is not None
    assert second.prediction.explanation is not None
    np.testing.assert_allclose(second.prediction.explanation, first.prediction.explanation, atol=1e-4)
    # a different model version or explanation option is a different entry
    an.analyze("tumor", data, explain=False)
    assert loader.forwards == 2
    # with no pixels needed, a hit does not even decode
    hit = an.analyze("tumor", data, explain=False, need_pixels=False)
    assert hit.cached
    assert hit.image is None
    assert "decode" not in hit.timing_ms
    assert cache.stats()["hits"] == 2


def test_cache_ttl_expires(tmp_path: Path) -> None:
    from inference.backends.base import Prediction

    cache = PredictionCache(tmp_path / "c", size_limit_bytes=2**20, ttl_s=1)
    cache.set("k", Prediction(label="a", probabilities={"a": 1.0}))
    assert cache.get("k") is not None
    time.sleep(1.2)
    assert cache.get("k") is None


def test_disabled_cache_always_misses(tiny_registry_file: Path, tiny_model_dir: Path) -> None:
    loader = Counting()
    an = Analyzer(
        make_manager(tiny_registry_file, tiny_model_dir, loader),
        PredictionCache(None, size_limit_bytes=1),
        max_bytes=2**22,
        max_pixels=10**6,
    )
    data = image_bytes(np.zeros((8, 8, 3), np.uint8))
    assert not an.analyze("xray", data).cached
    assert not an.analyze("xray", data).cached
    assert loader.forwards == 2


def test_cached_explanations_round_trip_exactly_and_compactly() -> None:
    heat = np.random.default_rng(3).random((64, 96)).astype(np.float32)
    pred = Prediction("a", {"a": 0.75, "b": 0.25}, heat, "gradcam", {"k": 1})
    raw = encode_prediction(pred)
    back = decode_prediction(raw)
    np.testing.assert_array_equal(back.explanation, heat)  # bit-exact float32, not rounded text
    assert back.explanation is not None
    assert back.explanation.dtype == np.float32
    assert (back.label, back.probabilities, back.explanation_kind, back.extra) == (
        "a",
        pred.probabilities,
        "gradcam",
        {"k": 1},
    )
    assert len(raw) < heat.nbytes * 1.4  # base64 of the float32 bytes, not a JSON number list


def test_cache_entries_in_the_earlier_list_format_still_decode() -> None:
    raw = json.dumps({"label": "a", "probabilities": {"a": 1.0}, "explanation": [[0.0, 0.5], [1.0, 0.25]]})
    back = decode_prediction(raw)
    assert back.explanation is not None
    np.testing.assert_array_equal(back.explanation, np.asarray([[0.0, 0.5], [1.0, 0.25]], np.float32))
