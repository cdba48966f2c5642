"""The HTTP side of access control: the gate in front of every route, the login page, tokens,
user management and the audit API.

* :class:`AuthGate` (ASGI middleware) resolves the caller once per request (``Authorization:
  Bearer`` or the signed session cookie) and refuses anonymous requests to everything except
  :data:`PUBLIC_PATHS` / :data:`PUBLIC_PREFIXES`: browsers are redirected to ``/login``, other
  clients get 401. It runs before FastAPI's and Gradio's routes alike, so a route added later
  is locked by default; Gradio is additionally mounted with ``auth_dependency`` so its handlers
  know the user.
* :class:`HardeningMiddleware` adds security headers, enforces body-size limits before a body is
  read, and strips CORS grants Gradio would otherwise give to localhost origins.
"""

from __future__ import annotations

import html
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import anyio
from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from auth.audit import AuditEntry, AuditFilter, AuditLog
from auth.db import ROLES, Database, open_database
from auth.errors import (
    AuthenticationRequired,
    CsrfFailed,
    DatabaseUnavailable,
    InvalidCredentials,
    TooManyRequests,
)
from auth.service import AuthService, Permission, Principal
from auth.tokens import TokenCodec, resolve_secret
from inference.errors import InvalidInput
from settings import Settings

log = logging.getLogger(__name__)

SESSION_COOKIE = "doctorai_session"
CSRF_COOKIE = "doctorai_csrf"
PUBLIC_PATHS = frozenset(
    {"/login", "/logout", "/api/health", "/api/token", "/api/token/refresh", "/favicon.ico"}  # browsers ask for it
)
PUBLIC_PREFIXES = ("/login/sso/", "/auth/callback/")
# Reachable with the scrape/probe token (DOCTORAI_METRICS_TOKEN) instead of a user.
PROBE_PATHS = frozenset({"/metrics", "/api/ready"})
UPLOAD_PATHS = ("/api/predict/", "/gradio_api/upload")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class AuthContext:
    """What the web layer needs, built once per app."""

    settings: Settings
    db: Database
    service: AuthService
    audit: AuditLog
    codec: TokenCodec
    sso: Any = None  # auth.sso.SSO when a provider is configured


def build_auth(settings: Settings) -> AuthContext:
    """Open (and migrate) the accounts database and create the first admin if there is none."""
    db = open_database(settings.resolved_database_url)
    codec = TokenCodec(resolve_secret(settings))
    service = AuthService(settings, db, codec)
    service.ensure_first_admin()
    keep = settings.data_dir / "audit_inputs" if settings.audit_keep_inputs else None
    ctx = AuthContext(settings, db, service, AuditLog(db, keep), codec)
    from auth.sso import build_sso

    ctx.sso = build_sso(settings)
    return ctx


# --------------------------------------------------------------------------- helpers
def client_ip(request: Request) -> str | None:
    # uvicorn rewrites request.client from X-Forwarded-For only for trusted proxies
    # (DOCTORAI_FORWARDED_ALLOW_IPS), so this cannot be spoofed by a client header.
    return request.client.host if request.client else None


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def safe_next(target: str | None) -> str:
    """Only same-site relative paths: never an open redirect to another host."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def current_principal(request: Request) -> Principal:
    """FastAPI dependency: the caller resolved by :class:`AuthGate` (401 if none)."""
    p = request.scope.get("state", {}).get("principal")
    if not isinstance(p, Principal):
        raise AuthenticationRequired()
    return p


def require(permission: Permission) -> Callable[[Request], Principal]:
    """FastAPI dependency factory: the caller, who must hold ``permission`` (else 403)."""

    def dep(request: Request) -> Principal:
        p = current_principal(request)
        p.require(permission)
        return p

    return dep


# Dependency aliases (module level: with postponed annotations FastAPI resolves them here).
CurrentUser = Annotated[Principal, Depends(current_principal)]
Analyst = Annotated[Principal, Depends(require(Permission.ANALYSE))]
UserAdmin = Annotated[Principal, Depends(require(Permission.MANAGE_USERS))]
AuditViewer = Annotated[Principal, Depends(require(Permission.VIEW_AUDIT))]


def gradio_user(request: Request) -> str | None:
    """Gradio's ``auth_dependency``: the username of the gate's principal, None = 401."""
    p = request.scope.get("state", {}).get("principal")
    return p.username if isinstance(p, Principal) else None


def _cookie_header(name: str, value: str, *, max_age: int, secure: bool, same_site: str = "lax") -> str:
    parts = [f"{name}={value}", "Path=/", "HttpOnly", f"SameSite={same_site}", f"Max-Age={max_age}"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def set_session_cookie(response: Response, ctx: AuthContext, sid: str, secure: bool) -> None:
    response.headers.append(
        "set-cookie",
        _cookie_header(SESSION_COOKIE, ctx.codec.sign_session(sid), max_age=ctx.settings.session_ttl_s, secure=secure),
    )


# --------------------------------------------------------------------------- ASGI middleware
class AuthGate:
    """Resolve the caller; refuse anonymous requests outside the public allow-list."""

    def __init__(self, app: ASGIApp, ctx: AuthContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
        try:
            principal = await anyio.to_thread.run_sync(self._resolve, headers)
        except DatabaseUnavailable as exc:
            if not public:
                await _json(scope, send, 503, {"detail": exc.message})
                return
            principal = None
        scope.setdefault("state", {})["principal"] = principal
        if principal is not None or public or self._probe_ok(path, headers):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4401})
            return
        method = scope.get("method", "GET")
        if method in ("GET", "HEAD") and "text/html" in headers.get("accept", ""):
            query = scope.get("query_string", b"").decode("latin-1")
            target = path + ("?" + query if query else "")
            location = "/login" if target == "/" else f"/login?next={quote(target, safe='')}"
            await _send(scope, send, 303, b"", [(b"location", location.encode("latin-1"))], "text/plain")
            return
        await _json(
            scope,
            send,
            401,
            {"detail": AuthenticationRequired().message, "error": "AuthenticationRequired"},
            [(b"www-authenticate", b"Bearer")],
        )

    def _resolve(self, headers: dict[str, str]) -> Principal | None:
        service = self.ctx.service
        auth = headers.get("authorization", "")
        if auth:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return service.principal_from_bearer(token.strip())
            return None
        cookie = _cookies(headers).get(SESSION_COOKIE)
        return service.principal_from_cookie(cookie) if cookie else None

    def _probe_ok(self, path: str, headers: dict[str, str]) -> bool:
        token = self.ctx.settings.metrics_token
        if path not in PROBE_PATHS or not token:
            return False
        return secrets.compare_digest(headers.get("authorization", ""), f"Bearer {token}")


def _cookies(headers: dict[str, str]) -> dict[str, str]:
    raw = headers.get("cookie", "")
    if not raw:
        return {}
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed Cookie header is the client's problem: treat as no cookie
        return {}
    return {k: m.value for k, m in jar.items()}


async def _send(
    scope: Scope, send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]], ctype: str
) -> None:
    hdrs = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


async def _json(
    scope: Scope, send: Send, status: int, payload: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    from api.logs import current_request_id

    payload = {**payload, "request_id": current_request_id()}
    await _send(scope, send, status, json.dumps(payload).encode(), headers or [], "application/json")


GRADIO_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' blob:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
    "media-src 'self' data: blob:; connect-src 'self'; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
STRICT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)


class HardeningMiddleware:
    """Security headers, request body limits, closed CORS."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.upload_limit = settings.max_upload_bytes + 1024 * 1024  # multipart framing
        self.body_limit = settings.max_request_kb * 1024
        self.cors = {o.rstrip("/") for o in settings.cors_origins}

    def _limit(self, path: str) -> int:
        return self.upload_limit if path.startswith(UPLOAD_PATHS) else self.body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        limit = self._limit(path)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            # Refused before a byte of the body is read into memory.
            await _json(scope, send, 413, {"detail": _too_large(limit, path), "error": "RequestTooLarge"})
            return
        https = scope.get("scheme") == "https"
        origin = headers.get("origin", "").rstrip("/")
        seen = 0
        overflow = False  # the body outgrew the limit: whatever the app answers becomes a 413
        replaced = False

        async def limited_receive() -> Message:
            nonlocal seen, overflow
            if overflow:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # chunked upload without (or lying about) Content-Length
                    # Tell the app the client went away: it stops reading at once (an exception
                    # here would be turned into a 400 by FastAPI's body parsing).
                    overflow = True
                    return {"type": "http.disconnect"}
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal replaced
            if overflow:
                if not replaced and message["type"] == "http.response.start":
                    replaced = True
                    await _json(scope, send, 413, {"detail": _too_large(limit, path), "error": "RequestTooLarge"})
                return
            if message["type"] == "http.response.start":
                hdrs = [(k, v) for k, v in message.get("headers", []) if not self._drop(k, origin)]
                present = {k.lower() for k, _ in hdrs}
                ctype = next((v for k, v in hdrs if k.lower() == b"content-type"), b"")
                csp = GRADIO_CSP if ctype.startswith(b"text/html") and path != "/login" else STRICT_CSP
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"strict-origin-when-cross-origin"),
                    (b"x-frame-options", b"DENY"),
                    (b"content-security-policy", csp.encode()),
                    (b"cross-origin-opener-policy", b"same-origin"),
                    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
                ]
                if ctype.startswith(b"text/html"):
                    # signed-in pages stay out of the HTTP cache: "Back" after logout asks the server
                    extra.append((b"cache-control", b"no-store"))
                if https:
                    extra.append((b"strict-transport-security", b"max-age=31536000; includeSubDomains"))
                if origin and origin in self.cors:
                    extra += [
                        (b"access-control-allow-origin", origin.encode("latin-1")),
                        (b"access-control-allow-credentials", b"true"),
                        (b"vary", b"Origin"),
                    ]
                hdrs += [(k, v) for k, v in extra if k not in present]
                message = {**message, "headers": hdrs}
            await send(message)

        if scope.get("method") == "OPTIONS" and origin and origin in self.cors:
            await _send(
                scope,
                send_with_headers,
                204,
                b"",
                [
                    (b"access-control-allow-methods", b"GET, POST, PATCH, DELETE, OPTIONS"),
                    (b"access-control-allow-headers", b"Authorization, Content-Type, X-Request-ID"),
                    (b"access-control-max-age", b"600"),
                ],
                "text/plain",
            )
            return
        try:
            await self.app(scope, limited_receive, send_with_headers)
        except Exception:
            if not overflow:
                raise
            if not replaced:  # the app failed on the cut-off body without answering
                replaced = True
                await _json(scope, send, 413, {"detail": _too_large(limit, path), "error": "RequestTooLarge"})

    def _drop(self, key: bytes, origin: str) -> bool:
        # Gradio grants CORS to localhost origins by itself; DoctorAI's CORS is closed unless
        # DOCTORAI_CORS_ORIGINS lists the origin.
        return key.lower().startswith(b"access-control-allow-") and not (origin and origin in self.cors)


def _too_large(limit: int, path: str) -> str:
    what = "upload" if path.startswith(UPLOAD_PATHS) else "request body"
    return f"the {what} is larger than the {limit / 2**20:.1f} MB limit"


# --------------------------------------------------------------------------- routes
class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int = Field(description="seconds the access token stays valid")
    refresh_token: str
    refresh_expires_in: int


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    username: str
    role: str
    active: bool
    email: str | None
    sso_provider: str | None
    created_at: datetime
    last_login_at: datetime | None


class UserCreate(BaseModel):
    username: str
    password: str
    role: str = "clinician"


class UserPatch(BaseModel):
    role: str | None = None
    active: bool | None = None
    password: str | None = None


def build_auth_router(ctx: AuthContext) -> APIRouter:
    """Login page, logout, tokens, users and audit routes."""
    router = APIRouter()
    service, settings, audit = ctx.service, ctx.settings, ctx.audit

    def admin_entry(request: Request, p: Principal, action: str, result: str) -> AuditEntry:
        return AuditEntry(action=action, username=p.username, role=p.role, client_ip=client_ip(request), result=result)

    def login_entry(request: Request, username: str, action: str = "login") -> AuditEntry:
        return AuditEntry(action=action, username=username[:150] or None, client_ip=client_ip(request))

    @router.get("/login", include_in_schema=False)
    def login_page(request: Request, next: str = "/", error: str | None = None, logged_out: bool = False) -> Response:
        p = request.scope.get("state", {}).get("principal")
        if isinstance(p, Principal) and not error:
            return RedirectResponse(safe_next(next), status_code=303)
        return _login_response(ctx, request, safe_next(next), error, 200, logged_out=logged_out)

    @router.post("/login", include_in_schema=False)
    def login_submit(
        request: Request,
        username: Annotated[str, Form(max_length=150)] = "",
        password: Annotated[str, Form(max_length=1024)] = "",
        csrf_token: Annotated[str, Form(max_length=200)] = "",
        next: Annotated[str, Form(max_length=2000)] = "/",
    ) -> Response:
        target = safe_next(next)
        if not ctx.codec.csrf_ok(request.cookies.get(CSRF_COOKIE), csrf_token):
            audit.record(
                AuditEntry(
                    action="login",
                    username=username or None,
                    client_ip=client_ip(request),
                    outcome="denied",
                    detail=CsrfFailed().message,
                )
            )
            return _login_response(ctx, request, target, CsrfFailed().message, 403)
        try:
            with audit.track(login_entry(request, username)) as entry:
                user = service.authenticate(username, password, client_ip(request))
                entry.role = user.role
                sid = service.open_session(user, "browser", settings.session_ttl_s, client_ip(request))
        except TooManyRequests as exc:
            resp = _login_response(ctx, request, target, exc.message, 429)
            resp.headers.update(exc.headers)
            return resp
        except InvalidCredentials as exc:
            return _login_response(ctx, request, target, exc.message, 401)
        response = RedirectResponse(target, status_code=303)
        set_session_cookie(response, ctx, sid, is_https(request))
        response.delete_cookie(CSRF_COOKIE, path="/")
        return response

    @router.get("/logout", include_in_schema=False)
    @router.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        p = request.scope.get("state", {}).get("principal")
        if isinstance(p, Principal):
            service.revoke_session(p.session_id)
            audit.record(AuditEntry(action="logout", username=p.username, role=p.role, client_ip=client_ip(request)))
        response = RedirectResponse("/login?logged_out=true", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @router.post("/api/token", response_model=TokenResponse, tags=["auth"])
    def token(
        request: Request,
        username: Annotated[str, Form(max_length=150)],
        password: Annotated[str, Form(max_length=1024)],
    ) -> TokenResponse:
        """OAuth2 password grant: a short-lived access token and a refresh token."""
        with audit.track(login_entry(request, username, "token")) as entry:
            user = service.authenticate(username, password, client_ip(request))
            entry.role = user.role
            pair = service.issue_tokens(user, client_ip(request))
        return TokenResponse(**pair.__dict__)

    @router.post("/api/token/refresh", response_model=TokenResponse, tags=["auth"])
    async def token_refresh(request: Request) -> TokenResponse:
        """Swap a refresh token (form or JSON field ``refresh_token``) for a new pair; the old
        refresh token stops working (rotation)."""
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            try:
                body = await request.json()
            except ValueError as exc:
                raise InvalidInput('send JSON {"refresh_token": "..."}') from exc
            raw = body.get("refresh_token") if isinstance(body, dict) else None
        else:
            raw = (await request.form()).get("refresh_token")
        if not isinstance(raw, str) or not raw:
            raise InvalidInput("send the refresh token as field 'refresh_token'")
        pair = await anyio.to_thread.run_sync(service.refresh, raw, client_ip(request))
        return TokenResponse(**pair.__dict__)

    @router.post("/api/logout", tags=["auth"], status_code=204)
    def api_logout(request: Request, p: CurrentUser) -> Response:
        """Revoke the session behind this token (its access and refresh tokens stop working)."""
        service.revoke_session(p.session_id)
        audit.record(AuditEntry(action="logout", username=p.username, role=p.role, client_ip=client_ip(request)))
        return Response(status_code=204)

    @router.get("/api/me", tags=["auth"])
    def me(p: CurrentUser) -> dict[str, Any]:
        return {
            "username": p.username,
            "role": p.role,
            "via": p.via,
            "permissions": sorted(str(x) for x in Permission if p.user.can(x)),
        }

    @router.get("/api/users", tags=["admin"])
    def users(p: UserAdmin) -> list[UserOut]:
        return [UserOut.model_validate(u) for u in service.list_users()]

    @router.post("/api/users", tags=["admin"], status_code=201)
    def create_user(request: Request, body: UserCreate, p: UserAdmin) -> UserOut:
        with audit.track(admin_entry(request, p, "user_create", f"{body.username} ({body.role})")):
            return UserOut.model_validate(service.create_user(body.username, body.password, body.role))

    @router.patch("/api/users/{username}", tags=["admin"])
    def patch_user(request: Request, username: str, body: UserPatch, p: UserAdmin) -> UserOut:
        changes = [k for k, v in body.model_dump().items() if v is not None]
        with audit.track(admin_entry(request, p, "user_update", f"{username}: {', '.join(changes) or 'nothing'}")):
            if body.role is not None:
                service.set_role(username, body.role)
            if body.active is not None:
                service.set_active(username, body.active)
            if body.password is not None:
                service.set_password(username, body.password)
            user = service.get_user(username)
            if user is None:
                raise InvalidInput(f"no user named {username!r}")
            return UserOut.model_validate(user)

    @router.get("/api/audit", tags=["admin"], response_model=None)
    def audit_rows(
        p: AuditViewer,
        user: str | None = None,
        model_id: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
        offset: Annotated[int, Query(ge=0)] = 0,
        format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
    ) -> Response:
        """Audit rows, newest first, filtered; ``format=csv`` downloads them as CSV."""
        rows = audit.query(
            AuditFilter(user, model_id, action, outcome, _naive_utc(since), _naive_utc(until), limit, offset)
        )
        if format == "csv":
            return PlainTextResponse(
                AuditLog.to_csv(rows),
                media_type="text/csv",
                headers={"Content-Disposition": 'attachment; filename="doctorai-audit.csv"'},
            )
        return JSONResponse({"rows": jsonable(rows), "count": len(rows), "roles": list(ROLES)})

    return router


def _naive_utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def jsonable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r.items()} for r in rows]


# --------------------------------------------------------------------------- login page
def _login_response(
    ctx: AuthContext, request: Request, target: str, error: str | None, status: int, logged_out: bool = False
) -> HTMLResponse:
    cookie, form_value = ctx.codec.csrf_pair()
    body = login_html(target, form_value, error, ctx.sso.buttons() if ctx.sso else [], logged_out)
    resp = HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})
    resp.headers.append(
        "set-cookie", _cookie_header(CSRF_COOKIE, cookie, max_age=3600, secure=is_https(request), same_site="strict")
    )
    return resp


def login_html(target: str, csrf: str, error: str | None, sso: list[tuple[str, str]], logged_out: bool) -> str:
    """The login page: self-contained (inline CSS, no scripts), in the app's colours."""
    e = html.escape
    msg = ""
    if error:
        msg = f'<p class="err" role="alert">{e(error)}</p>'
    elif logged_out:
        msg = '<p class="ok" role="status">You are logged out.</p>'
    buttons = "".join(
        f'<a class="sso" href="{e(url)}?next={quote(target, safe="")}">{e(label)}</a>' for label, url in sso
    )
    if buttons:
        buttons = f'<div class="or">or</div>{buttons}'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Log in · DoctorAI</title>
<style>
body{{margin:0;font-family:ui-sans-serif,system-ui,-apple-system,"Segoe UI",sans-serif;background:#f9fafb;
color:#1f2937}}
main{{max-width:380px;margin:8vh auto;background:#fff;border:1px solid #e5e7eb;border-radius:12px;padding:28px 32px;
box-shadow:0 1px 3px rgba(0,0,0,.06)}}
h1{{margin:0 0 4px;font-size:1.6rem}} .sub{{margin:0 0 20px;color:#6b7280;font-size:.92rem}}
label{{display:block;font-weight:600;font-size:.9rem;margin:14px 0 6px}}
input[type=text],input[type=password]{{box-sizing:border-box;width:100%;padding:9px 11px;border:1px solid #d1d5db;
border-radius:8px;font-size:1rem}} input:focus{{outline:2px solid #fb923c;border-color:#f97316}}
button,.sso{{display:block;box-sizing:border-box;width:100%;margin-top:20px;padding:10px;border:0;border-radius:8px;
background:#f97316;color:#fff;font-size:1rem;font-weight:600;cursor:pointer;text-align:center;text-decoration:none}}
.sso{{background:#fff;color:#1f2937;border:1px solid #d1d5db;margin-top:10px}}
.or{{text-align:center;color:#9ca3af;margin-top:16px;font-size:.85rem}}
.err{{background:#fdecea;border:1px solid #e57373;border-radius:8px;padding:8px 12px;color:#7f1d1d}}
.ok{{background:#ecfdf5;border:1px solid #6ee7b7;border-radius:8px;padding:8px 12px;color:#065f46}}
.notice{{margin-top:22px;background:#fff4e5;border:1px solid #f0a030;border-radius:8px;padding:8px 12px;
color:#5a3300;font-size:.85rem}}
</style></head>
<body><main>
<h1>DoctorAI</h1><p class="sub">Clinical imaging workbench. Sign in to continue.</p>
{msg}
<form method="post" action="/login" autocomplete="on">
<input type="hidden" name="csrf_token" value="{e(csrf)}"><input type="hidden" name="next" value="{e(target)}">
<label for="username">Username</label><input id="username" name="username" type="text" required maxlength="150"
autocomplete="username" autofocus>
<label for="password">Password</label><input id="password" name="password" type="password" required maxlength="1024"
autocomplete="current-password">
<button type="submit" id="login-submit">Log in</button>
</form>{buttons}
<p class="notice"><b>Research use, not a diagnosis.</b> Access is logged.</p>
</main></body></html>"""


__all__ = [
    "AuthContext",
    "AuthGate",
    "HardeningMiddleware",
    "build_auth",
    "build_auth_router",
    "current_principal",
    "gradio_user",
    "require",
]
