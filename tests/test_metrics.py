"""Prometheus metrics: names, labels and values move exactly with the requests made."""

from __future__ import annotations

from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from settings import Settings
from tests.conftest import image_bytes, login


def scrape(client: Any, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_inference_and_request_metrics_count_exactly(client: Any) -> None:
    before = scrape(client)
    rng = np.random.default_rng(0)
    images = [image_bytes(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(3)]
    for data in images:
        assert client.post("/api/predict/tumor", files={"file": ("x.png", data)}).status_code == 200
    assert client.post("/api/predict/tumor", files={"file": ("x.png", images[0])}).json()["cached"] is True
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("doctorai_inference_stage_seconds_count", model="tumor", stage="total") == 4
    assert delta("doctorai_inference_stage_seconds_count", model="tumor", stage="forward") == 3  # not on the hit
    assert delta("doctorai_analyses_total", model="tumor", version="1.0.0", cached="false") == 3
    assert delta("doctorai_analyses_total", model="tumor", version="1.0.0", cached="true") == 1
    assert delta("doctorai_cache_events_total", result="hit") == 1
    assert delta("doctorai_cache_events_total", result="miss") == 3
    route = {"method": "POST", "route": "/api/predict/{model_id}"}
    assert delta("doctorai_http_requests_total", status="200", **route) == 4
    assert delta("doctorai_http_request_duration_seconds_count", **route) == 4
    assert value(after, "doctorai_model_loaded", model="tumor", version="1.0.0") == 1
    assert value(after, "doctorai_model_loaded", model="xray", version="1.0.0") == 0
    assert value(after, "doctorai_model_load_seconds", model="tumor") > 0
    assert value(after, "doctorai_process_resident_memory_bytes") > 50 * 2**20


def test_errors_are_counted_by_status(client: Any) -> None:
    before = scrape(client)
    client.post("/api/predict/tumor", files={"file": ("x.png", b"not an image")})
    client.post("/api/predict/nope", files={"file": ("x.png", b"x")})
    after = scrape(client)
    labels = {"method": "POST", "route": "/api/predict/{model_id}"}
    assert (
        value(after, "doctorai_http_requests_total", status="415", **labels)
        - value(before, "doctorai_http_requests_total", status="415", **labels)
        == 1
    )
    assert (
        value(after, "doctorai_http_requests_total", status="404", **labels)
        - value(before, "doctorai_http_requests_total", status="404", **labels)
        == 1
    )


def test_scrape_token_is_enforced(settings: Settings) -> None:
    from fastapi.testclient import TestClient

    from app import create_app

    settings.metrics_token = "scrape-secret"
    with TestClient(create_app(settings)) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert (
            "doctorai_http_requests_total" in c.get("/metrics", headers={"Authorization": "Bearer scrape-secret"}).text
        )


def test_metrics_need_the_scrape_token_or_an_admin(settings: Settings) -> None:
    from fastapi.testclient import TestClient

    from app import create_app

    prod = settings.model_copy(update={"env": "production", "secret_key": "x" * 40})
    with TestClient(create_app(prod)) as c:
        assert c.get("/metrics").status_code == 401  # anonymous
        admin = login(c)
        c.post(
            "/api/users", json={"username": "dr-who", "password": "clinician-pw-1", "role": "clinician"}, headers=admin
        )
        assert c.get("/metrics", headers=login(c, "dr-who", "clinician-pw-1")).status_code == 403
        assert "doctorai_http_requests_total" in c.get("/metrics", headers=admin).text
