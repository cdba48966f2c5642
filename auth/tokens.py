"""Signed credentials: JWT access/refresh tokens (HS256 via joserfc) and the session cookie
(itsdangerous). Keys are derived from ``DOCTORAI_SECRET_KEY`` per purpose, so a value signed
for one use never verifies as another."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from settings import DEFAULT_SECRET, Settings

log = logging.getLogger(__name__)

ISSUER = "doctorai"


def resolve_secret(settings: Settings) -> bytes:
    """The signing secret. In development without ``DOCTORAI_SECRET_KEY`` a random one is kept in
    ``DATA_DIR/.secret_key`` (0600), so nobody can forge sessions with the well-known default;
    production refuses to start without a real key (see :class:`settings.Settings`)."""
    if settings.secret_key and settings.secret_key != DEFAULT_SECRET:
        return settings.secret_key.encode("utf-8")
    path: Path = settings.data_dir / ".secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = path.open("x")  # exclusive create: two workers starting together agree on one key
    except FileExistsError:
        return path.read_text(encoding="ascii").strip().encode("ascii")
    with fd:
        path.chmod(0o600)
        fd.write(secrets.token_urlsafe(48))
    log.warning("DOCTORAI_SECRET_KEY is not set: using a generated development key in %s", path)
    return path.read_text(encoding="ascii").strip().encode("ascii")


def derive(secret: bytes, purpose: str) -> bytes:
    return hmac.new(secret, purpose.encode("ascii"), hashlib.sha256).digest()


@dataclass(frozen=True)
class TokenClaims:
    user_id: int
    session_id: str
    token_version: int
    kind: str  # "access" | "refresh"
    expires_at: float


class TokenCodec:
    """Encodes and verifies the API's JWTs and the browser session cookie."""

    def __init__(self, secret: bytes) -> None:
        self._jwt_key = OctKey.import_key(derive(secret, "jwt"))
        self._cookie = URLSafeTimedSerializer(derive(secret, "session-cookie"), salt="doctorai-session")
        self._csrf_key = derive(secret, "csrf")

    def encode(self, claims: TokenClaims) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "sub": str(claims.user_id),
            "sid": claims.session_id,
            "ver": claims.token_version,
            "typ": claims.kind,
            "iat": now,
            "exp": int(claims.expires_at),
            "jti": secrets.token_hex(8),
        }
        return jwt.encode({"alg": "HS256", "typ": "JWT"}, payload, self._jwt_key)

    def decode(self, token: str, kind: str) -> TokenClaims | None:
        """The claims of a well-signed, unexpired token of ``kind``; None otherwise."""
        try:
            tok = jwt.decode(token, self._jwt_key, algorithms=["HS256"])
            jwt.JWTClaimsRegistry(
                iss={"essential": True, "value": ISSUER},
                exp={"essential": True},
                sub={"essential": True},
                typ={"essential": True, "value": kind},
            ).validate(tok.claims)
            c = tok.claims
            return TokenClaims(int(c["sub"]), str(c["sid"]), int(c["ver"]), kind, float(c["exp"]))
        except (JoseError, ValueError, KeyError, TypeError):
            return None

    def sign_session(self, session_id: str) -> str:
        return self._cookie.dumps(session_id)

    def unsign_session(self, cookie: str, max_age_s: int) -> str | None:
        try:
            value = self._cookie.loads(cookie, max_age=max_age_s)
        except BadSignature:  # includes SignatureExpired
            return None
        return value if isinstance(value, str) else None

    def csrf_pair(self) -> tuple[str, str]:
        """(cookie value, form value) for the double-submit CSRF check of the login form."""
        raw = secrets.token_urlsafe(24)
        return raw, self.csrf_form_value(raw)

    def csrf_form_value(self, cookie_value: str) -> str:
        return hmac.new(self._csrf_key, cookie_value.encode("utf-8"), hashlib.sha256).hexdigest()

    def csrf_ok(self, cookie_value: str | None, form_value: str | None) -> bool:
        if not cookie_value or not form_value:
            return False
        return hmac.compare_digest(self.csrf_form_value(cookie_value), form_value)
