"""On-disk prediction cache keyed by image hash, model and version.

Values are JSON (never pickle), so a cache directory shared between processes cannot be
used to run code. A model update changes ``model_version`` and so misses old entries.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from inference.backends.base import Prediction

log = logging.getLogger(__name__)

KEY_SCHEMA = "v1"


def cache_key(sha256: str, model_id: str, model_version: str, explain: bool) -> str:
    return f"{KEY_SCHEMA}:{model_id}:{model_version}:{'cam' if explain else 'plain'}:{sha256}"


def encode_prediction(pred: Prediction) -> str:
    expl = pred.explanation
    return json.dumps(
        {
            "label": pred.label,
            "probabilities": pred.probabilities,
            "explanation": None if expl is None else np.round(expl.astype(np.float64), 5).tolist(),
            "explanation_kind": pred.explanation_kind,
            "extra": pred.extra,
        }
    )


def decode_prediction(raw: str) -> Prediction:
    d = json.loads(raw)
    expl = d.get("explanation")
    return Prediction(
        label=d["label"],
        probabilities={k: float(v) for k, v in d["probabilities"].items()},
        explanation=None if expl is None else np.asarray(expl, dtype=np.float32),
        explanation_kind=d.get("explanation_kind"),
        extra=d.get("extra") or {},
    )


class PredictionCache:
    """A size-bounded diskcache with TTL. Disabled instances always miss."""

    def __init__(self, directory: Path | None, *, size_limit_bytes: int, ttl_s: int = 3600) -> None:
        self.ttl_s = ttl_s
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._cache: Any = None
        if directory is not None:
            import diskcache

            Path(directory).mkdir(parents=True, exist_ok=True)
            self._cache = diskcache.Cache(
                str(directory), size_limit=size_limit_bytes, eviction_policy="least-recently-used"
            )

    @property
    def enabled(self) -> bool:
        return self._cache is not None

    def get(self, key: str) -> Prediction | None:
        if self._cache is None:
            return None
        try:
            raw = self._cache.get(key)
        except Exception:  # a damaged cache must degrade to a miss, never to an error
            log.warning("prediction cache read failed", exc_info=True)
            raw = None
        with self._lock:
            if raw is None:
                self.misses += 1
            else:
                self.hits += 1
        return None if raw is None else decode_prediction(raw)

    def set(self, key: str, pred: Prediction) -> None:
        if self._cache is None:
            return
        try:
            self._cache.set(key, encode_prediction(pred), expire=self.ttl_s or None)
        except Exception:
            log.warning("prediction cache write failed", exc_info=True)

    def get_bytes(self, key: str) -> bytes | None:
        """A rendered artefact (PNG) stored with :meth:`set_bytes`; not counted as a hit."""
        if self._cache is None:
            return None
        try:
            value = self._cache.get(key)
        except Exception:
            log.warning("prediction cache read failed", exc_info=True)
            return None
        return value if isinstance(value, bytes) else None

    def set_bytes(self, key: str, value: bytes) -> None:
        if self._cache is None:
            return
        try:
            self._cache.set(key, value, expire=self.ttl_s or None)
        except Exception:
            log.warning("prediction cache write failed", exc_info=True)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"enabled": self.enabled, "hits": self.hits, "misses": self.misses}
        if self._cache is not None:
            out["entries"] = len(self._cache)
            out["size_bytes"] = self._cache.volume()
        return out

    def clear(self) -> None:
        if self._cache is not None:
            self._cache.clear()

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
