"""On-disk prediction cache keyed by image hash, model and version.

Values are JSON (never pickle), so a cache directory shared between processes cannot be
used to run code. A model update changes ``model_version`` and so misses old entries.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from inference.backends.base import Prediction

log = logging.getLogger(__name__)

KEY_SCHEMA = "v1"


def cache_key(sha256: str, model_id: str, model_version: str, explain: bool) -> str:
    return f"{KEY_SCHEMA}:{model_id}:{model_version}:{'cam' if explain else 'plain'}:{sha256}"


def encode_prediction(pred: Prediction) -> str:
    """JSON with the explanation map as base64 little-endian float32 plus its shape: a
    placed 96 x 96 Grad-CAM map as a JSON number list cost ~3 ms per request to write."""
    expl = pred.explanation
    packed = None
    if expl is not None:
        arr = np.ascontiguousarray(expl, dtype="<f4")
        packed = {"shape": list(arr.shape), "f32": base64.b64encode(arr.tobytes()).decode("ascii")}
    return json.dumps(
        {
            "label": pred.label,
            "probabilities": pred.probabilities,
            "explanation": packed,
            "explanation_kind": pred.explanation_kind,
            "extra": pred.extra,
        }
    )


def _decode_explanation(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, dict):
        flat = np.frombuffer(base64.b64decode(value["f32"], validate=True), dtype="<f4")
        return flat.reshape([int(n) for n in value["shape"]]).astype(np.float32)
    return np.asarray(value, dtype=np.float32)  # entries written before the packed format


def decode_prediction(raw: str) -> Prediction:
    d = json.loads(raw)
    return Prediction(
        label=d["label"],
        probabilities={k: float(v) for k, v in d["probabilities"].items()},
        explanation=_decode_explanation(d.get("explanation")),
        explanation_kind=d.get("explanation_kind"),
        extra=d.get("extra") or {},
    )


class _DiskStore:
    """diskcache: one process or several on one machine (a shared directory)."""

    name = "disk"

    def __init__(self, directory: Path, size_limit_bytes: int) -> None:
        import diskcache

        Path(directory).mkdir(parents=True, exist_ok=True)
        self._c = diskcache.Cache(str(directory), size_limit=size_limit_bytes, eviction_policy="least-recently-used")

    def get(self, key: str) -> str | bytes | None:
        value = self._c.get(key)
        return value if isinstance(value, str | bytes) else None

    def set(self, key: str, value: str | bytes, ttl_s: int) -> None:
        self._c.set(key, value, expire=ttl_s or None)

    def ping(self) -> None:
        self._c.get("__ping__")

    def stats(self) -> dict[str, Any]:
        return {"entries": len(self._c), "size_bytes": self._c.volume()}

    def clear(self) -> None:
        self._c.clear()

    def close(self) -> None:
        self._c.close()


class _RedisStore:
    """Redis: one cache shared by every replica. Short timeouts, so an unreachable Redis costs
    a request a fraction of a second at most (and then nothing while the breaker is open)."""

    name = "redis"
    PREFIX = "doctorai:"

    def __init__(self, url: str, timeout_s: float) -> None:
        import redis

        self._r = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=30
        )

    def get(self, key: str) -> str | bytes | None:
        value = self._r.get(self.PREFIX + key)
        return value if isinstance(value, bytes) else None

    def set(self, key: str, value: str | bytes, ttl_s: int) -> None:
        data = value.encode("utf-8") if isinstance(value, str) else value
        self._r.set(self.PREFIX + key, data, ex=ttl_s or None)

    def ping(self) -> None:
        self._r.ping()

    def stats(self) -> dict[str, Any]:
        return {}

    def clear(self) -> None:
        for key in self._r.scan_iter(self.PREFIX + "*", count=1000):
            self._r.delete(key)

    def close(self) -> None:
        self._r.close()


class PredictionCache:
    """A prediction cache on diskcache (default) or Redis (``redis_url``). Disabled instances
    always miss. A failing backend never fails a request: the cache is bypassed (a miss),
    ``errors`` counts the failures, and after one the backend is left alone for
    ``retry_after_s`` before it is tried again, so recovery is automatic."""

    def __init__(
        self,
        directory: Path | None,
        *,
        size_limit_bytes: int,
        ttl_s: int = 3600,
        redis_url: str | None = None,
        redis_timeout_s: float = 0.25,
        retry_after_s: float = 2.0,
    ) -> None:
        self.ttl_s = ttl_s
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.retry_after_s = retry_after_s
        self._down_until = 0.0
        self._lock = threading.Lock()
        self._store: _DiskStore | _RedisStore | None = None
        if redis_url:
            self._store = _RedisStore(redis_url, redis_timeout_s)
        elif directory is not None:
            self._store = _DiskStore(directory, size_limit_bytes)

    @property
    def enabled(self) -> bool:
        return self._store is not None

    @property
    def backend(self) -> str:
        return self._store.name if self._store is not None else "off"

    @property
    def healthy(self) -> bool:
        """False while the backend is considered down (after a failure, for ``retry_after_s``)."""
        return time.monotonic() >= self._down_until

    def _failed(self, what: str) -> None:
        with self._lock:
            self.errors += 1
            first = self.healthy
            self._down_until = time.monotonic() + self.retry_after_s
        if first:
            log.warning(
                "prediction cache %s failed (%s backend); bypassing it for %.0f s",
                what,
                self.backend,
                self.retry_after_s,
                exc_info=True,
            )

    def _read(self, key: str) -> str | bytes | None:
        if self._store is None or not self.healthy:
            return None
        try:
            return self._store.get(key)
        except Exception:  # a damaged or unreachable cache degrades to a miss, never to an error
            self._failed("read")
            return None

    def _write(self, key: str, value: str | bytes) -> None:
        if self._store is None or not self.healthy:
            return
        try:
            self._store.set(key, value, self.ttl_s)
        except Exception:
            self._failed("write")

    def get(self, key: str) -> Prediction | None:
        if self._store is None:
            return None
        raw = self._read(key)
        with self._lock:
            if raw is None:
                self.misses += 1
            else:
                self.hits += 1
        if raw is None:
            return None
        try:
            return decode_prediction(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        except (ValueError, KeyError, TypeError):  # binascii.Error is a ValueError
            log.warning("dropping an unreadable cache entry %s", key)
            return None

    def set(self, key: str, pred: Prediction) -> None:
        self._write(key, encode_prediction(pred))

    def get_bytes(self, key: str) -> bytes | None:
        """A rendered artefact (PNG) stored with :meth:`set_bytes`; not counted as a hit."""
        value = self._read(key)
        return value if isinstance(value, bytes) else None

    def set_bytes(self, key: str, value: bytes) -> None:
        self._write(key, value)

    def ping(self) -> bool:
        """Whether the backend answers now (health checks); resets the breaker when it does."""
        if self._store is None:
            return True
        try:
            self._store.ping()
        except Exception:
            self._failed("ping")
            return False
        self._down_until = 0.0
        return True

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "enabled": self.enabled,
            "backend": self.backend,
            "healthy": self.healthy,
            "hits": self.hits,
            "misses": self.misses,
            "errors": self.errors,
        }
        if self._store is not None and self.healthy:
            try:
                out.update(self._store.stats())
            except Exception:
                self._failed("stats")
        return out

    def clear(self) -> None:
        if self._store is not None:
            self._store.clear()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
