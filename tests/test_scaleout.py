"""Scale-out on standard infrastructure, for real: two app processes on different loopback ports
share one Redis (prediction cache) and one PostgreSQL (users, sessions, audit); outages of either
are survived; a real Prometheus scrapes the app; several uvicorn workers report one set of metrics.

Servers come from the Debian packages redis-server, postgresql and prometheus (``.ci/run``
installs them); the tests skip, naming the package, where one is missing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import ADMIN_PASSWORD, image_bytes, run_app, token_headers
from tests.services import PostgresServer, RedisServer, prometheus_server

PROBE = "scaleout-probe-token"
SECRET = "scale-out-test-secret-0123456789abcdef"


@dataclass
class Cluster:
    a: str
    b: str
    redis: RedisServer
    postgres: PostgresServer


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_registry_file: Path
) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("scaleout")
    with ExitStack() as stack:
        redis = RedisServer(work)
        redis.start()
        stack.callback(redis.stop)
        postgres = PostgresServer()
        stack.callback(postgres.remove)
        postgres.start()
        env = {
            "DOCTORAI_MODEL_DIR": str(tiny_model_dir),
            "DOCTORAI_REGISTRY_FILE": str(tiny_registry_file),
            "DOCTORAI_DEVICE": "cpu",
            "DOCTORAI_DATABASE_URL": postgres.url,
            "DOCTORAI_REDIS_URL": redis.url,
            "DOCTORAI_SECRET_KEY": SECRET,
            "DOCTORAI_METRICS_TOKEN": PROBE,
        }
        # One after the other: the first one migrates the shared database and creates the admin.
        a = stack.enter_context(run_app(tmp_path_factory.mktemp("replica-a"), **env))
        b = stack.enter_context(run_app(tmp_path_factory.mktemp("replica-b"), **env))
        yield Cluster(a, b, redis, postgres)


def png(seed: int) -> bytes:
    return image_bytes(np.random.default_rng(seed).integers(0, 255, (48, 48, 3), dtype=np.uint8))


def predict(url: str, data: bytes, headers: dict[str, str], request_id: str | None = None) -> httpx.Response:
    extra = {"X-Request-ID": request_id} if request_id else {}
    return httpx.post(
        f"{url}/api/predict/tumor", files={"file": ("x.png", data)}, headers={**headers, **extra}, timeout=60
    )


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {PROBE}"}, timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def health(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/api/health", timeout=10)
    assert r.status_code == 200  # liveness never fails because a dependency does
    body: dict[str, Any] = r.json()
    return body


def test_a_result_computed_on_one_replica_is_a_cache_hit_on_the_other(cluster: Cluster) -> None:
    ha, hb = token_headers(cluster.a), token_headers(cluster.b)
    data = png(1)
    first = predict(cluster.a, data, ha)
    assert first.status_code == 200
    assert first.json()["cached"] is False
    second = predict(cluster.b, data, hb)
    assert second.status_code == 200
    assert second.json()["cached"] is True
    assert second.json()["probabilities"] == first.json()["probabilities"]
    assert metric(cluster.b, "doctorai_cache_events_total", result="hit") >= 1


def test_a_user_created_on_one_replica_logs_in_on_the_other(cluster: Cluster) -> None:
    r = httpx.post(
        f"{cluster.a}/api/users",
        json={"username": "shared-user", "password": "shared-pass-1", "role": "clinician"},
        headers=token_headers(cluster.a),
        timeout=30,
    )
    assert r.status_code == 201, r.text
    hb = token_headers(cluster.b, "shared-user", "shared-pass-1")
    assert httpx.get(f"{cluster.b}/api/me", headers=hb, timeout=10).json()["role"] == "clinician"
    # a token issued by one replica is honoured by the other (sessions live in the database)
    assert httpx.get(f"{cluster.a}/api/me", headers=hb, timeout=10).json()["username"] == "shared-user"
    # and revoked everywhere at once
    assert httpx.post(f"{cluster.a}/api/logout", headers=hb, timeout=10).status_code == 204
    assert httpx.get(f"{cluster.b}/api/me", headers=hb, timeout=10).status_code == 401


def test_audit_rows_from_both_replicas_land_in_one_table(cluster: Cluster) -> None:
    ha, hb = token_headers(cluster.a), token_headers(cluster.b)
    assert predict(cluster.a, png(2), ha, "from-replica-a").status_code == 200
    assert predict(cluster.b, png(3), hb, "from-replica-b").status_code == 200
    rows = httpx.get(f"{cluster.a}/api/audit", params={"action": "predict"}, headers=ha, timeout=10).json()["rows"]
    by_request = {r["request_id"]: r for r in rows}
    assert by_request["from-replica-a"]["input_sha256"] == hashlib.sha256(png(2)).hexdigest()
    assert by_request["from-replica-b"]["input_sha256"] == hashlib.sha256(png(3)).hexdigest()


def test_redis_down_the_app_keeps_answering_and_recovers(cluster: Cluster) -> None:
    ha = token_headers(cluster.a)
    errors_before = metric(cluster.a, "doctorai_cache_backend_errors_total", backend="redis")
    cluster.redis.stop()
    try:
        t = time.perf_counter()
        r = predict(cluster.a, png(4), ha)
        assert r.status_code == 200
        assert r.json()["cached"] is False
        assert time.perf_counter() - t < 10
        again = predict(cluster.a, png(4), ha)
        assert again.status_code == 200  # bypassed, so computed again
        assert again.json()["cached"] is False
        assert metric(cluster.a, "doctorai_cache_backend_errors_total", backend="redis") > errors_before
        assert metric(cluster.a, "doctorai_cache_backend_up", backend="redis") == 0
        time.sleep(2.1)  # the health answer is cached for 2 s
        h = health(cluster.a)
        assert h["status"] == "degraded"
        assert h["dependencies"]["cache"] == "down"
    finally:
        cluster.redis.start()
    time.sleep(2.5)  # the cache breaker retries after 2 s
    data = png(5)
    assert predict(cluster.a, data, ha).json()["cached"] is False
    assert predict(cluster.a, data, ha).json()["cached"] is True
    time.sleep(2.1)
    assert health(cluster.a)["status"] == "ok"


def test_prometheus_scrapes_the_inference_latency(cluster: Cluster, tmp_path: Path) -> None:
    ha = token_headers(cluster.a)
    assert predict(cluster.a, png(6), ha).status_code == 200
    target = cluster.a.removeprefix("http://")
    with prometheus_server(tmp_path, [target], PROBE) as prom:
        query = 'doctorai_inference_stage_seconds_count{model="tumor",stage="total"}'
        deadline = time.monotonic() + 60
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            body = httpx.get(f"{prom}/api/v1/query", params={"query": query}, timeout=10).json()
            assert body["status"] == "success"
            result = body["data"]["result"]
            if result:
                break
            time.sleep(0.5)
        assert result, "Prometheus never returned the series"
        assert result[0]["metric"]["job"] == "doctorai"
        assert float(result[0]["value"][1]) >= 1
        targets = httpx.get(f"{prom}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        assert targets[0]["health"] == "up"


def test_postgres_down_login_is_503_and_health_degraded(cluster: Cluster) -> None:
    ha = token_headers(cluster.a)
    cluster.postgres.stop()
    try:
        r = httpx.post(f"{cluster.a}/api/token", data={"username": "admin", "password": ADMIN_PASSWORD}, timeout=30)
        assert r.status_code == 503, r.text
        assert "unavailable" in r.json()["detail"]
        protected = httpx.get(f"{cluster.a}/api/me", headers=ha, timeout=30)
        assert protected.status_code == 503
        time.sleep(2.1)
        h = health(cluster.a)
        assert h["status"] == "degraded"
        assert h["dependencies"]["database"] == "down"
    finally:
        cluster.postgres.start()
    deadline = time.monotonic() + 30
    while True:  # the pool reconnects (pool_pre_ping) once the server is back
        r = httpx.post(f"{cluster.a}/api/token", data={"username": "admin", "password": ADMIN_PASSWORD}, timeout=30)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.status_code == 200


def test_metrics_are_aggregated_across_uvicorn_workers(
    tmp_path: Path, tiny_model_dir: Path, tiny_registry_file: Path
) -> None:
    mp_dir = tmp_path / "prom-mp"
    mp_dir.mkdir()
    argv = ("-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", "{port}", "--workers", "2")
    with run_app(
        tmp_path / "data",
        argv,
        DOCTORAI_MODEL_DIR=str(tiny_model_dir),
        DOCTORAI_REGISTRY_FILE=str(tiny_registry_file),
        DOCTORAI_DEVICE="cpu",
        DOCTORAI_METRICS_TOKEN=PROBE,
        DOCTORAI_CACHE_ENABLED="false",
        PROMETHEUS_MULTIPROC_DIR=str(mp_dir),
    ) as url:
        headers = token_headers(url)
        n = 6
        for i in range(n):
            with httpx.Client(timeout=60) as fresh:  # a new connection each time: both workers serve some
                r = fresh.post(f"{url}/api/predict/tumor", files={"file": ("x.png", png(100 + i))}, headers=headers)
                assert r.status_code == 200, r.text
        pids = {p.name.split("_")[-1].split(".")[0] for p in mp_dir.glob("*.db")}
        assert len(pids) == 2, f"expected files from 2 workers, got {sorted(pids)}"
        for _ in range(4):  # whichever worker answers the scrape reports the sum over both
            assert metric(url, "doctorai_inference_stage_seconds_count", model="tumor", stage="total") == n
            assert metric(url, "doctorai_analyses_total", model="tumor") == n
