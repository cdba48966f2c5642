"""Alembic environment: runs on the connection :func:`auth.db.upgrade` hands over, or, from the
command line (``alembic -c auth/alembic.ini upgrade head``), on ``DOCTORAI_DATABASE_URL``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from auth.db import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from settings import get_settings

        url = get_settings().resolved_database_url
    engine = create_engine(url)
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run()
