"""``python -m auth.users`` and the Alembic migrations, as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def run(args: list[str], data: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCTORAI_DATA_DIR": str(data), "DOCTORAI_BCRYPT_ROUNDS": "4", "DOCTORAI_LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


def test_users_cli_add_list_role_disable_passwd(tmp_path: Path) -> None:
    from auth.db import open_database
    from auth.passwords import verify_password
    from auth.service import AuthService
    from auth.tokens import TokenCodec
    from settings import Settings

    added = run(
        ["-m", "auth.users", "add", "nina", "--role", "researcher", "--password-stdin"], tmp_path, "nina-pass-1\n"
    )
    assert added.returncode == 0, added.stderr
    assert "created nina (researcher)" in added.stdout
    dup = run(["-m", "auth.users", "add", "nina", "--password-stdin"], tmp_path, "nina-pass-1\n")
    assert dup.returncode == 2
    assert "already exists" in dup.stderr
    weak = run(["-m", "auth.users", "passwd", "nina", "--password-stdin"], tmp_path, "short\n")
    assert weak.returncode == 2
    assert "at least 8" in weak.stderr
    assert run(["-m", "auth.users", "passwd", "nina", "--password-stdin"], tmp_path, "nina-pass-2\n").returncode == 0
    assert run(["-m", "auth.users", "role", "nina", "clinician"], tmp_path).returncode == 0
    assert run(["-m", "auth.users", "disable", "nina"], tmp_path).returncode == 0
    listing = run(["-m", "auth.users", "list"], tmp_path).stdout.splitlines()
    row = next(line.split() for line in listing if line.startswith("nina"))
    assert row[:4] == ["nina", "clinician", "False", "password"]

    settings = Settings(data_dir=tmp_path, bcrypt_rounds=4)
    db = open_database(settings.resolved_database_url)
    service = AuthService(settings, db, TokenCodec(b"k" * 32))
    with db.session() as s:
        from sqlalchemy import select

        from auth.db import User

        user = s.scalar(select(User).where(User.username == "nina"))
        assert user is not None
        assert verify_password("nina-pass-2", user.password_hash)
        assert user.token_version == 3  # passwd, role and disable each revoked her sessions
    assert service.get_user("nina") is not None
    db.dispose()


def test_alembic_migrates_an_empty_database_to_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ops.db'}"
    env = {**os.environ, "DOCTORAI_DATABASE_URL": url}
    up = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", "auth/alembic.ini", "upgrade", "head"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert up.returncode == 0, up.stderr
    current = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", "auth/alembic.ini", "current"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "0001 (head)" in current.stdout
    # the app then finds the schema current and only adds its first admin
    from auth.db import open_database

    db = open_database(url)
    assert db.user_count() == 0
    db.dispose()
