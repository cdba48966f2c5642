"""bcrypt password hashing with a configurable cost, and the password rules."""

from __future__ import annotations

import bcrypt

from auth.errors import InvalidAccount

MIN_LENGTH = 8
MAX_BYTES = 72  # bcrypt only reads 72 bytes; bcrypt>=5 refuses longer input instead of truncating


def check_policy(password: str) -> None:
    """Raise :class:`InvalidAccount` with the rule when ``password`` is not acceptable."""
    if len(password) < MIN_LENGTH:
        raise InvalidAccount(f"a password needs at least {MIN_LENGTH} characters")
    if len(password.encode("utf-8")) > MAX_BYTES:
        raise InvalidAccount(f"a password may be at most {MAX_BYTES} bytes (UTF-8)")
    if password.strip() != password or not password.isprintable():
        raise InvalidAccount("a password may not start or end with spaces or contain control characters")


def hash_password(password: str, rounds: int = 12) -> str:
    check_policy(password)
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds)).decode("ascii")


def verify_password(password: str, hashed: str | None) -> bool:
    """Constant-time check; False (never an exception) for input bcrypt cannot take."""
    raw = password.encode("utf-8")
    if not hashed or len(raw) > MAX_BYTES:
        return False
    try:
        return bcrypt.checkpw(raw, hashed.encode("ascii"))
    except ValueError:
        return False


# A real hash to verify against when the user does not exist, so "unknown user" costs the same
# time as "wrong password" and response timing does not reveal which usernames exist.
_DUMMY: dict[int, str] = {}


def dummy_verify(password: str, rounds: int) -> None:
    if rounds not in _DUMMY:
        _DUMMY[rounds] = bcrypt.hashpw(b"not-a-real-password", bcrypt.gensalt(rounds)).decode("ascii")
    verify_password(password, _DUMMY[rounds])
