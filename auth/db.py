"""The accounts database: users, sessions (browser and API) and the append-only audit log.

SQLite under ``DATA_DIR`` by default; ``DOCTORAI_DATABASE_URL`` points every replica at one
PostgreSQL instead. The schema is owned by Alembic (``auth/migrations``); :func:`open_database`
upgrades it to head on start, so a fresh data dir and an old one end up the same.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from auth.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
ROLES = ("admin", "clinician", "researcher")


def utcnow() -> datetime:
    """Naive UTC: what every timestamp column stores (SQLite keeps no zone)."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(150), unique=True, index=True)
    password_hash: Mapped[str | None] = mapped_column(String(100), nullable=True)  # None: SSO-only account
    role: Mapped[str] = mapped_column(String(20))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    sso_provider: Mapped[str | None] = mapped_column(String(50), nullable=True)
    sso_subject: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Bumped on password change / disable: every session and token issued before is void.
    token_version: Mapped[int] = mapped_column(Integer, default=0)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    __table_args__ = (Index("ix_users_sso", "sso_provider", "sso_subject", unique=True),)


class UserSession(Base):
    """A browser session or an API refresh-token family; any replica can verify it."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(10))  # "browser" | "api"
    token_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    client_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AuditEvent(Base):
    """One row per analysis, chat question, login or account change. Append-only: the
    migration installs triggers that reject UPDATE and DELETE."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    username: Mapped[str | None] = mapped_column(String(150), nullable=True, index=True)
    role: Mapped[str | None] = mapped_column(String(20), nullable=True)
    action: Mapped[str] = mapped_column(String(30))
    model_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    model_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    input_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    result: Mapped[str | None] = mapped_column(String(500), nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    client_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    outcome: Mapped[str] = mapped_column(String(20))  # ok | rejected | error | denied
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class Database:
    """An engine plus a session factory; :meth:`session` maps driver failures to a 503."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            # Several threads (FastAPI's pool, Gradio workers) share the engine; waits, not errors,
            # when another process holds the write lock.
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 15}
        else:
            kwargs["pool_timeout"] = 5
            if url.startswith("postgresql"):
                kwargs["connect_args"] = {"connect_timeout": 3}  # a down database fails fast (503)
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: commits on success, rolls back on error; an unreachable database
        becomes :class:`DatabaseUnavailable` (503), never a 500."""
        try:
            with self._sessions() as s, s.begin():
                yield s
        except DBAPIError as exc:
            if exc.connection_invalidated or _is_unavailable(exc):
                log.error("database unavailable: %s", exc.orig)
                raise DatabaseUnavailable("the account database is unavailable; try again shortly") from exc
            raise

    def ping(self) -> bool:
        try:
            with self.session() as s:
                s.execute(select(1))
            return True
        except DatabaseUnavailable:
            return False

    def user_count(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(User)) or 0)

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer (two workers, audit writes)
    # WAL + NORMAL: a commit no longer waits for an fsync (it cost ~5 ms per audited request);
    # the database stays consistent, and only the last commits before a power cut can be lost.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=15000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _is_unavailable(exc: DBAPIError) -> bool:
    from sqlalchemy.exc import InterfaceError, OperationalError

    if isinstance(exc, InterfaceError):
        return True
    if isinstance(exc, OperationalError):
        text = str(exc.orig).lower()
        # SQLite "database is locked" past busy_timeout is also an availability problem.
        return any(k in text for k in ("connect", "server", "terminat", "locked", "timeout", "closed", "refused"))
    return False


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(db: Database) -> None:
    """Bring the schema to the newest Alembic revision. Serialised across processes (uvicorn
    workers, replicas starting together): a file lock for SQLite, an advisory lock for PostgreSQL."""
    from alembic import command
    from sqlalchemy import text

    cfg = alembic_config(db.url)
    with _sqlite_file_lock(db.url), db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(72700101)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@contextmanager
def _sqlite_file_lock(url: str) -> Iterator[None]:
    if not url.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock_path = Path(url.removeprefix("sqlite:///") + ".migrate.lock")
    with lock_path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_database(url: str, migrate: bool = True) -> Database:
    """Connect and (by default) migrate. The SQLite file's folder is created if missing."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    db = Database(url)
    if migrate:
        try:
            upgrade(db)
        except DBAPIError as exc:
            raise DatabaseUnavailable(f"cannot migrate the account database: {exc.orig}") from exc
    if url.startswith("sqlite:///"):
        # Accounts, sessions and audit rows: readable by the server's user only, also for a file an
        # older version created 0644.
        for suffix in ("", "-wal", "-shm", "-journal"):
            target = Path(url.removeprefix("sqlite:///") + suffix)
            if target.exists():
                target.chmod(0o600)
    return db
