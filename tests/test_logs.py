"""Request ids in responses, error bodies and JSON log lines."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from api.logs import REQUEST_ID, JsonFormatter, RequestIdFilter


def test_every_response_has_a_request_id_and_errors_carry_it(client: Any) -> None:
    r = client.get("/api/health")
    assert len(r.headers["x-request-id"]) == 32
    r = client.post("/api/predict/tumor", files={"file": ("x.png", b"junk")}, headers={"X-Request-ID": "trace-42"})
    assert r.status_code == 415
    assert r.headers["x-request-id"] == "trace-42"
    assert r.json()["request_id"] == "trace-42"


def test_an_insane_request_id_is_replaced(client: Any) -> None:
    r = client.get("/api/health", headers={"X-Request-ID": "x" * 500})
    assert r.headers["x-request-id"] != "x" * 500
    assert len(r.headers["x-request-id"]) == 32


def test_log_lines_are_json_with_the_request_id() -> None:
    record = logging.makeLogRecord(
        {"name": "doctorai.test", "levelname": "WARNING", "msg": "hello %s", "args": ("world",)}
    )
    record.model = "brain_tumor"
    token = REQUEST_ID.set("abc123")
    try:
        RequestIdFilter().filter(record)
    finally:
        REQUEST_ID.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello world"
    assert line["request_id"] == "abc123"
    assert line["level"] == "WARNING"
    assert line["model"] == "brain_tumor"


def test_rejections_are_logged_with_the_request_id(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="api.routes")
    caplog.handler.addFilter(RequestIdFilter())
    client.post("/api/predict/tumor", files={"file": ("x.png", b"junk")}, headers={"X-Request-ID": "trace-77"})
    rejected = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert rejected
    assert getattr(rejected[-1], "request_id", None) == "trace-77"
