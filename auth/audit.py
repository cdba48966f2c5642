"""The audit log: who analysed what, when, with which model, and how it ended.

Rows go to the ``audit_events`` table of the accounts database (append-only, enforced by
database triggers). The input image is never stored: only its SHA-256, unless
``DOCTORAI_AUDIT_KEEP_INPUTS`` explicitly asks to keep inputs (under ``DATA_DIR/audit_inputs``).
Writing an audit row never fails the request it describes; a failure is logged loudly.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from auth.db import AuditEvent, Database, utcnow
from inference.errors import DoctorAIError

log = logging.getLogger(__name__)

COLUMNS = (
    "id",
    "ts",
    "request_id",
    "username",
    "role",
    "action",
    "model_id",
    "model_version",
    "input_sha256",
    "result",
    "latency_ms",
    "client_ip",
    "outcome",
    "detail",
)
OUTCOMES = ("ok", "rejected", "error", "denied")


@dataclass
class AuditEntry:
    """One event being recorded; the code doing the work fills in what it learns."""

    action: str
    username: str | None = None
    role: str | None = None
    model_id: str | None = None
    model_version: str | None = None
    input_sha256: str | None = None
    result: str | None = None
    latency_ms: float | None = None
    client_ip: str | None = None
    outcome: str = "ok"
    detail: str | None = None
    request_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditFilter:
    username: str | None = None
    model_id: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 200
    offset: int = 0


class AuditLog:
    def __init__(self, db: Database, keep_inputs_dir: Path | None = None) -> None:
        self.db = db
        self.keep_inputs_dir = keep_inputs_dir

    def record(self, entry: AuditEntry) -> None:
        if entry.request_id is None:
            from api.logs import current_request_id  # the HTTP request being served, if any

            entry.request_id = current_request_id()
        row = AuditEvent(
            ts=utcnow(),
            request_id=entry.request_id,
            username=entry.username,
            role=entry.role,
            action=entry.action[:30],
            model_id=entry.model_id,
            model_version=entry.model_version,
            input_sha256=entry.input_sha256,
            result=(entry.result or None) and entry.result[:500],
            latency_ms=None if entry.latency_ms is None else round(entry.latency_ms, 2),
            client_ip=(entry.client_ip or None) and entry.client_ip[:64],
            outcome=entry.outcome,
            detail=(entry.detail or None) and entry.detail[:2000],
        )
        try:
            with self.db.session() as s:
                s.add(row)
        except Exception:  # the audit must not turn a served request into an error; ops must see it
            log.exception("could not write the audit row for %s by %s", entry.action, entry.username)

    def keep_input(self, sha256: str, data: bytes) -> None:
        if self.keep_inputs_dir is None:
            return
        self.keep_inputs_dir.mkdir(parents=True, exist_ok=True)
        path = self.keep_inputs_dir / sha256
        if not path.exists():
            path.write_bytes(data)

    def query(self, f: AuditFilter) -> list[dict[str, Any]]:
        q = select(AuditEvent)
        if f.username:
            q = q.where(AuditEvent.username == f.username)
        if f.model_id:
            q = q.where(AuditEvent.model_id == f.model_id)
        if f.action:
            q = q.where(AuditEvent.action == f.action)
        if f.outcome:
            q = q.where(AuditEvent.outcome == f.outcome)
        if f.since:
            q = q.where(AuditEvent.ts >= f.since)
        if f.until:
            q = q.where(AuditEvent.ts < f.until)
        q = q.order_by(AuditEvent.id.desc()).offset(max(0, f.offset)).limit(max(1, min(f.limit, 10_000)))
        with self.db.session() as s:
            return [_row_dict(r) for r in s.scalars(q)]

    @staticmethod
    def to_csv(rows: list[dict[str, Any]]) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_safe(v) for k, v in r.items()})
        return buf.getvalue()

    @contextmanager
    def track(self, entry: AuditEntry, data: bytes | None = None) -> Iterator[AuditEntry]:
        """Record ``entry`` when the block ends: ``ok``, ``rejected`` (a 4xx domain error),
        ``denied`` (401/403/429) or ``error``; latency measured here. With ``data`` its SHA-256 is
        filled in even when the input is rejected before any model sees it."""
        start = time.perf_counter()
        if data is not None and entry.input_sha256 is None:
            entry.input_sha256 = hashlib.sha256(data).hexdigest()
        try:
            yield entry
        except DoctorAIError as exc:
            code = exc.status_code
            entry.outcome = "denied" if code in (401, 403, 429) else "rejected" if code < 500 else "error"
            entry.detail = f"{type(exc).__name__}: {exc.message}"
            raise
        except Exception as exc:
            entry.outcome = "error"
            entry.detail = type(exc).__name__
            raise
        finally:
            entry.latency_ms = (time.perf_counter() - start) * 1e3
            self.record(entry)
            if data is not None and entry.input_sha256 and self.keep_inputs_dir is not None:
                self.keep_input(entry.input_sha256, data)


def result_summary(label: str, probabilities: dict[str, float], cached: bool) -> str:
    """What the audit keeps of a result: the label and the class probabilities."""
    probs = ", ".join(f"{c}={p:.3f}" for c, p in probabilities.items())
    return f"{label} ({probs}){' [cached]' if cached else ''}"


def _row_dict(r: AuditEvent) -> dict[str, Any]:
    out = {c: getattr(r, c) for c in COLUMNS}
    out["ts"] = r.ts.isoformat(timespec="milliseconds") + "Z"
    return out


def _csv_safe(value: Any) -> Any:
    # Spreadsheet formula injection: a cell starting with = + - @ is executed by Excel/LibreOffice.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
