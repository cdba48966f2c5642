"""Accounts, logins, sessions and tokens: the one place that decides who someone is.

Everything the edges need is here: :meth:`AuthService.authenticate` (password login with
per-account and per-IP lockout), browser sessions, JWT access/refresh tokens with rotation and
revocation, SSO account provisioning, and user management. Web code (``auth.web``) only
translates HTTP to these calls.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from auth.db import ROLES, Database, User, UserSession, utcnow
from auth.errors import (
    AccountLocked,
    Forbidden,
    InvalidAccount,
    InvalidCredentials,
    InvalidToken,
    TooManyRequests,
)
from auth.passwords import dummy_verify, hash_password, verify_password
from auth.ratelimit import FailureTracker, SlidingWindow, backoff_s
from auth.tokens import TokenClaims, TokenCodec
from settings import Settings

log = logging.getLogger(__name__)

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{1,149}$")


class Permission(StrEnum):
    ANALYSE = "analyse"
    MANAGE_USERS = "manage_users"
    VIEW_AUDIT = "view_audit"
    RESEARCH = "research"  # batch / evaluation features


ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "admin": frozenset(Permission),
    "researcher": frozenset({Permission.ANALYSE, Permission.RESEARCH}),
    "clinician": frozenset({Permission.ANALYSE}),
}


@dataclass(frozen=True)
class UserInfo:
    """A user as the rest of the app sees it (no hash, detached from the database)."""

    id: int
    username: str
    role: str
    active: bool
    email: str | None
    sso_provider: str | None
    created_at: datetime
    last_login_at: datetime | None

    @classmethod
    def of(cls, u: User) -> UserInfo:
        return cls(u.id, u.username, u.role, u.active, u.email, u.sso_provider, u.created_at, u.last_login_at)

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS.get(self.role, frozenset())


@dataclass(frozen=True)
class Principal:
    """Who is making this request, and through which credential."""

    user: UserInfo
    session_id: str
    via: str  # "cookie" | "bearer"

    @property
    def username(self) -> str:
        return self.user.username

    @property
    def role(self) -> str:
        return self.user.role

    def require(self, permission: Permission) -> None:
        if not self.user.can(permission):
            raise Forbidden(f"your role ({self.role}) may not do this; it needs the '{permission}' permission")


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret


class AuthService:
    """Users, logins and credentials on one :class:`Database`."""

    def __init__(self, settings: Settings, db: Database, codec: TokenCodec) -> None:
        self.settings = settings
        self.db = db
        self.codec = codec
        self.ip_failures = FailureTracker(
            settings.login_ip_max_failures, settings.login_lockout_s, settings.login_lockout_max_s
        )
        self.analysis_limit = SlidingWindow(settings.analyses_per_minute, 60.0)

    # ------------------------------------------------------------------ users
    def ensure_first_admin(self) -> str | None:
        """With no users at all, create ``admin``. Its password is ``DOCTORAI_ADMIN_PASSWORD`` or a
        random one, written once to the console; returns the generated password (else None)."""
        if self.db.user_count() > 0:
            return None
        generated = self.settings.admin_password is None
        password = self.settings.admin_password or secrets.token_urlsafe(12)
        try:
            self.create_user("admin", password, "admin")
        except InvalidAccount:  # another worker created it a moment ago
            return None
        if generated:
            # Deliberately on the console, not in the (possibly shipped) log stream: shown once.
            sys.stderr.write(
                "\n" + "=" * 64 + "\nDoctorAI first start: created user 'admin' with password\n"
                f"    {password}\nChange it: python -m auth.users passwd admin\n" + "=" * 64 + "\n\n"
            )
            sys.stderr.flush()
            return password
        log.info("first start: created user 'admin' from DOCTORAI_ADMIN_PASSWORD")
        return None

    def create_user(
        self,
        username: str,
        password: str | None,
        role: str,
        email: str | None = None,
        active: bool = True,
        sso: tuple[str, str] | None = None,
    ) -> UserInfo:
        """A new account; ``password=None`` with ``sso=(provider, subject)`` makes an SSO-only one."""
        if not _USERNAME.match(username):
            raise InvalidAccount(
                "a username is 2-150 characters: letters, digits and . _ @ - (starting with a letter or digit)"
            )
        if role not in ROLES:
            raise InvalidAccount(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        hashed = hash_password(password, self.settings.bcrypt_rounds) if password is not None else None
        user = User(
            username=username,
            password_hash=hashed,
            role=role,
            active=active,
            email=email,
            sso_provider=sso[0] if sso else None,
            sso_subject=sso[1] if sso else None,
            token_version=0,
            failed_logins=0,
            created_at=utcnow(),
            last_login_at=utcnow() if sso else None,
        )
        try:
            with self.db.session() as s:
                s.add(user)
                s.flush()
                return UserInfo.of(user)
        except IntegrityError as exc:
            raise InvalidAccount(f"a user named {username!r} already exists") from exc

    def get_user(self, username: str) -> UserInfo | None:
        with self.db.session() as s:
            u = s.scalar(select(User).where(User.username == username))
            return UserInfo.of(u) if u else None

    def list_users(self) -> list[UserInfo]:
        with self.db.session() as s:
            return [UserInfo.of(u) for u in s.scalars(select(User).order_by(User.username))]

    def _require_user(self, s: Session, username: str) -> User:
        u = s.scalar(select(User).where(User.username == username))
        if u is None:
            raise InvalidAccount(f"no user named {username!r}")
        return u

    def set_password(self, username: str, password: str) -> None:
        """New password; every session and token of the user is revoked."""
        hashed = hash_password(password, self.settings.bcrypt_rounds)
        with self.db.session() as s:
            u = self._require_user(s, username)
            u.password_hash = hashed
            u.token_version += 1
            u.failed_logins = 0
            u.locked_until = None

    def set_active(self, username: str, active: bool) -> None:
        with self.db.session() as s:
            u = self._require_user(s, username)
            if not active and u.role == "admin" and u.active:
                self._keep_one_admin(s, u)
            u.active = active
            if not active:
                u.token_version += 1

    def set_role(self, username: str, role: str) -> None:
        if role not in ROLES:
            raise InvalidAccount(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        with self.db.session() as s:
            u = self._require_user(s, username)
            if u.role == "admin" and role != "admin":
                self._keep_one_admin(s, u)
            u.role = role
            u.token_version += 1  # tokens carry no role, but sessions should re-read it

    def _keep_one_admin(self, s: Session, u: User) -> None:
        others = s.scalars(select(User).where(User.role == "admin", User.active, User.id != u.id)).first()
        if others is None:
            raise InvalidAccount("this is the last active admin; make another admin first")

    # ------------------------------------------------------------------ login
    def authenticate(self, username: str, password: str, client_ip: str | None) -> UserInfo:
        """Check a password login. Raises :class:`AccountLocked` (429) while the account or the
        IP is locked out, :class:`InvalidCredentials` (401) otherwise on failure."""
        ip_key = client_ip or "?"
        ip_wait = self.ip_failures.locked_for(ip_key)
        if ip_wait > 0:
            raise AccountLocked(f"too many failed logins from your address; try again in {ip_wait:.0f} s", ip_wait)
        now = utcnow()
        with self.db.session() as s:
            u = s.scalar(select(User).where(User.username == username))
            if u is None:
                dummy_verify(password, self.settings.bcrypt_rounds)
                self._ip_failed(ip_key)
                raise InvalidCredentials()
            if u.locked_until is not None and u.locked_until > now:
                wait = (u.locked_until - now).total_seconds()
                raise AccountLocked(
                    f"this account is locked after repeated failed logins; try again in {wait:.0f} s", wait
                )
            if not verify_password(password, u.password_hash):
                u.failed_logins += 1
                wait = backoff_s(
                    u.failed_logins,
                    self.settings.login_max_failures,
                    self.settings.login_lockout_s,
                    self.settings.login_lockout_max_s,
                )
                if wait > 0:
                    u.locked_until = now + timedelta(seconds=wait)
                    log.warning("account %s locked for %.0f s after %d failures", username, wait, u.failed_logins)
                failed = True
            else:
                failed = False
                if not u.active:
                    raise InvalidCredentials("this account is disabled; ask an administrator")
                u.failed_logins = 0
                u.locked_until = None
                u.last_login_at = now
                info = UserInfo.of(u)
        if failed:  # outside the transaction: the failure count must be committed
            self._ip_failed(ip_key)
            raise InvalidCredentials()
        self.ip_failures.success(ip_key)
        return info

    def _ip_failed(self, ip_key: str) -> None:
        wait = self.ip_failures.failure(ip_key)
        if wait > 0:
            log.warning("login lockout for address %s: %.0f s", ip_key, wait)

    def check_analysis_rate(self, username: str) -> None:
        wait = self.analysis_limit.hit(username)
        if wait is not None:
            raise TooManyRequests(
                f"at most {self.settings.analyses_per_minute} requests per minute; try again in {wait:.0f} s", wait
            )

    # ------------------------------------------------------------------ sessions and tokens
    def open_session(self, user: UserInfo, kind: str, ttl_s: int, client_ip: str | None) -> str:
        return self._open_session(user, kind, ttl_s, client_ip)[0]

    def _open_session(self, user: UserInfo, kind: str, ttl_s: int, client_ip: str | None) -> tuple[str, int]:
        """(session id, the user's token version it was opened under)."""
        sid = secrets.token_urlsafe(32)
        with self.db.session() as s:
            u = s.get(User, user.id)
            if u is None or not u.active:
                raise InvalidCredentials("this account is disabled; ask an administrator")
            s.add(
                UserSession(
                    id=sid,
                    user_id=u.id,
                    kind=kind,
                    token_version=u.token_version,
                    created_at=utcnow(),
                    expires_at=utcnow() + timedelta(seconds=ttl_s),
                    client_ip=(client_ip or "")[:64] or None,
                )
            )
            version = u.token_version
        return sid, version

    def revoke_session(self, session_id: str) -> None:
        with self.db.session() as s:
            s.execute(
                update(UserSession)
                .where(UserSession.id == session_id, UserSession.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )

    def _principal(self, session_id: str, via: str, token_version: int | None = None) -> Principal | None:
        now = utcnow()
        with self.db.session() as s:
            row = s.execute(
                select(UserSession, User).join(User, User.id == UserSession.user_id).where(UserSession.id == session_id)
            ).first()
            if row is None:
                return None
            sess, u = row
            if sess.revoked_at is not None or sess.expires_at <= now or not u.active:
                return None
            if sess.token_version != u.token_version:
                return None
            if token_version is not None and token_version != u.token_version:
                return None
            return Principal(UserInfo.of(u), sess.id, via)

    def principal_from_cookie(self, cookie: str) -> Principal | None:
        sid = self.codec.unsign_session(cookie, self.settings.session_ttl_s)
        return None if sid is None else self._principal(sid, "cookie")

    def principal_from_bearer(self, token: str) -> Principal | None:
        claims = self.codec.decode(token, "access")
        if claims is None:
            return None
        p = self._principal(claims.session_id, "bearer", claims.token_version)
        return p if p is not None and p.user.id == claims.user_id else None

    def issue_tokens(self, user: UserInfo, client_ip: str | None) -> TokenPair:
        sid, version = self._open_session(user, "api", self.settings.refresh_token_ttl_s, client_ip)
        now = time.time()
        st = self.settings
        access = self.codec.encode(TokenClaims(user.id, sid, version, "access", now + st.access_token_ttl_s))
        refresh = self.codec.encode(TokenClaims(user.id, sid, version, "refresh", now + st.refresh_token_ttl_s))
        return TokenPair(access, refresh, st.access_token_ttl_s, st.refresh_token_ttl_s)

    def refresh(self, refresh_token: str, client_ip: str | None) -> TokenPair:
        """Rotate: the old refresh token's session is revoked and a new pair issued. A revoked,
        expired or reused refresh token is refused."""
        claims = self.codec.decode(refresh_token, "refresh")
        p = None if claims is None else self._principal(claims.session_id, "bearer", claims.token_version)
        if claims is None or p is None or p.user.id != claims.user_id:
            raise InvalidToken("the refresh token is invalid, expired or revoked; log in again with POST /api/token")
        self.revoke_session(claims.session_id)
        return self.issue_tokens(p.user, client_ip)

    # ------------------------------------------------------------------ single sign-on
    def sso_user(self, provider: str, subject: str, username: str, email: str | None, role: str) -> UserInfo:
        """The account of an SSO identity, created on first login with ``role``."""
        with self.db.session() as s:
            u = s.scalar(select(User).where(User.sso_provider == provider, User.sso_subject == subject))
            if u is not None:
                if not u.active:
                    raise InvalidCredentials("this account is disabled; ask an administrator")
                u.last_login_at = utcnow()
                if email:
                    u.email = email
                return UserInfo.of(u)
        base = re.sub(r"[^A-Za-z0-9._@-]", "-", username or subject)[:140].strip("-.") or "user"
        name = base
        for i in range(2, 50):  # a local account may already have that name
            if self.get_user(name) is None:
                break
            name = f"{base}-{i}"
        user = self.create_user(name, None, role, email=email, sso=(provider, subject))
        log.info("created %s user %s (%s) on first SSO login", provider, name, role)
        return user
