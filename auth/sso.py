"""Single sign-on through OpenID Connect (Authlib's Starlette client).

Two providers, each on when configured:

* ``oidc``: any OpenID Connect provider (Keycloak, Entra ID, Google, ...) given by
  ``DOCTORAI_OIDC_ISSUER`` / ``_CLIENT_ID`` / ``_CLIENT_SECRET``; sign-in can be limited to
  e-mail domains, and a groups claim can map to roles (``DOCTORAI_OIDC_ROLE_MAP``).
* ``huggingface``: Hugging Face OAuth on Spaces (``hf_oauth: true`` in the README front matter
  makes Spaces inject ``OAUTH_CLIENT_ID``/``OAUTH_CLIENT_SECRET``/``OPENID_PROVIDER_URL``).

A first SSO login creates the account with ``DOCTORAI_SSO_DEFAULT_ROLE`` (or the mapped role);
after that an admin manages it like any other. The browser ends up with the same session cookie
as after a password login. The OAuth state/nonce/PKCE verifier live in a separate, short-lived
signed cookie (Starlette's SessionMiddleware).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from auth.audit import AuditEntry
from auth.db import ROLES
from auth.errors import InvalidCredentials
from settings import Settings

log = logging.getLogger(__name__)

OAUTH_COOKIE = "doctorai_oauth"


class SSO:
    """The configured providers and their role/domain rules."""

    def __init__(self, settings: Settings) -> None:
        from authlib.integrations.starlette_client import OAuth

        self.settings = settings
        self.oauth = OAuth()
        self.labels: dict[str, str] = {}
        if settings.oidc_issuer and settings.oidc_client_id:
            self.oauth.register(
                "oidc",
                client_id=settings.oidc_client_id,
                client_secret=settings.oidc_client_secret,
                server_metadata_url=settings.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration",
                client_kwargs={"scope": settings.oidc_scopes, "code_challenge_method": "S256"},
            )
            self.labels["oidc"] = settings.oidc_name
        if settings.hf_oauth_client_id:
            self.oauth.register(
                "huggingface",
                client_id=settings.hf_oauth_client_id,
                client_secret=settings.hf_oauth_client_secret,
                server_metadata_url=settings.hf_openid_provider_url.rstrip("/") + "/.well-known/openid-configuration",
                client_kwargs={"scope": settings.hf_oauth_scopes, "code_challenge_method": "S256"},
            )
            self.labels["huggingface"] = "Sign in with Hugging Face"

    def buttons(self) -> list[tuple[str, str]]:
        return [(label, f"/login/sso/{name}") for name, label in self.labels.items()]

    def redirect_uri(self, request: Request, provider: str) -> str:
        if provider == "huggingface" and self.settings.space_host:
            return f"https://{self.settings.space_host}/auth/callback/huggingface"
        return str(request.url_for("sso_callback", provider=provider))

    def role_for(self, claims: dict[str, Any]) -> str:
        groups = claims.get(self.settings.oidc_role_claim) or []
        if isinstance(groups, str):
            groups = [groups]
        for group, role in self.settings.oidc_role_map.items():
            if group in groups and role in ROLES:
                return role
        return self.settings.sso_default_role

    def check_domain(self, claims: dict[str, Any]) -> None:
        allowed = [d.lower().lstrip("@") for d in self.settings.oidc_allowed_domains]
        if not allowed:
            return
        email = str(claims.get("email") or "")
        domain = email.rpartition("@")[2].lower()
        if not email or not claims.get("email_verified", False) or domain not in allowed:
            raise InvalidCredentials(f"single sign-on is limited to verified e-mail addresses at {', '.join(allowed)}")


def build_sso(settings: Settings) -> SSO | None:
    sso = SSO(settings)
    return sso if sso.labels else None


def build_sso_router(ctx: Any) -> APIRouter:
    """``/login/sso/{provider}`` starts the flow; ``/auth/callback/{provider}`` finishes it."""
    from authlib.integrations.base_client import OAuthError

    from auth.web import client_ip, is_https, safe_next, set_session_cookie

    router = APIRouter(include_in_schema=False)
    sso: SSO = ctx.sso

    @router.get("/login/sso/{provider}")
    async def sso_start(request: Request, provider: str, next: str = "/") -> Response:
        client = sso.oauth.create_client(provider) if provider in sso.labels else None
        if client is None:
            return RedirectResponse("/login?error=" + "unknown+sign-in+provider", status_code=303)
        request.session["next"] = safe_next(next)
        response: Response = await client.authorize_redirect(request, sso.redirect_uri(request, provider))
        return response

    @router.get("/auth/callback/{provider}", name="sso_callback")
    async def sso_callback(request: Request, provider: str) -> Response:
        import anyio

        client = sso.oauth.create_client(provider) if provider in sso.labels else None
        entry = AuditEntry(action="sso_login", client_ip=client_ip(request), detail=provider)
        target = safe_next(request.session.pop("next", "/"))
        try:
            if client is None:
                raise InvalidCredentials("unknown sign-in provider")
            token = await client.authorize_access_token(request)
            claims = dict(token.get("userinfo") or {})
            if not claims:
                claims = dict(await client.userinfo(token=token))
            sso.check_domain(claims)
            subject = str(claims.get("sub") or "")
            if not subject:
                raise InvalidCredentials("the sign-in provider returned no subject")
            name = str(claims.get("preferred_username") or claims.get("email") or subject)
            user = await anyio.to_thread.run_sync(
                ctx.service.sso_user, provider, subject, name, claims.get("email"), sso.role_for(claims)
            )
            sid = await anyio.to_thread.run_sync(
                ctx.service.open_session, user, "browser", ctx.settings.session_ttl_s, client_ip(request)
            )
        except (OAuthError, InvalidCredentials) as exc:
            message = getattr(exc, "message", None) or getattr(exc, "description", None) or str(exc)
            entry.outcome, entry.detail = "denied", f"{provider}: {message}"
            ctx.audit.record(entry)
            log.warning("SSO login via %s refused: %s", provider, message)
            from urllib.parse import quote

            return RedirectResponse(f"/login?error={quote('Single sign-on failed: ' + message)}", status_code=303)
        entry.username, entry.role = user.username, user.role
        ctx.audit.record(entry)
        response = RedirectResponse(target, status_code=303)
        set_session_cookie(response, ctx, sid, is_https(request))
        return response

    return router
