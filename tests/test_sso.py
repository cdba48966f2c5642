"""Single sign-on against a real OpenID Connect provider (Authlib's server, tests/oidc_provider.py)
started on loopback: the app's Authlib client discovers it, redirects, exchanges the code,
verifies the id_token, provisions the user and opens a normal session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from settings import Settings
from tests.conftest import login
from tests.oidc_provider import LocalOIDCProvider

USERS: dict[str, dict[str, Any]] = {
    "alice": {"email": "alice@hospital.example", "name": "Alice Doe", "groups": ["radiology"]},
    "bob": {"email": "bob@hospital.example", "name": "Bob Roe"},
    "mallory": {"email": "mallory@elsewhere.example", "name": "Mallory"},
}


@pytest.fixture
def provider() -> Iterator[LocalOIDCProvider]:
    with LocalOIDCProvider(client_id="doctorai", client_secret="sso-secret", users=USERS) as op:
        op.add_redirect_uri("http://testserver/auth/callback/oidc")
        yield op


@pytest.fixture
def sso_client(settings: Settings, provider: LocalOIDCProvider) -> Iterator[TestClient]:
    from app import create_app

    configured = settings.model_copy(
        update={
            "oidc_issuer": provider.issuer,
            "oidc_client_id": "doctorai",
            "oidc_client_secret": "sso-secret",
            "oidc_name": "Hospital login",
            "oidc_allowed_domains": ["hospital.example"],
            "oidc_role_map": {"radiology": "researcher"},
            "sso_default_role": "clinician",
        }
    )
    with TestClient(create_app(configured)) as c:
        yield c


def sso_login(c: TestClient, op: LocalOIDCProvider, user: str, next_path: str = "/") -> Any:
    """Click "Hospital login" as ``user``: app -> provider (real HTTP) -> app callback."""
    start = c.get(f"/login/sso/oidc?next={next_path}", follow_redirects=False)
    assert start.status_code == 302
    authorize = start.headers["location"]
    assert authorize.startswith(op.issuer + "/authorize")
    query = parse_qs(urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"]  # PKCE
    assert query["nonce"]
    assert query["state"]
    op.current_user = user
    back = httpx.get(authorize, follow_redirects=False, timeout=10)
    assert back.status_code == 302
    callback = back.headers["location"]
    assert callback.startswith("http://testserver/auth/callback/oidc?")
    return c.get(callback, follow_redirects=False)


def test_login_page_offers_the_provider(sso_client: TestClient) -> None:
    page = sso_client.get("/login")
    assert "Hospital login" in page.text
    assert 'href="/login/sso/oidc?next=%2F"' in page.text


def test_first_sso_login_creates_the_user_and_opens_a_session(
    sso_client: TestClient, provider: LocalOIDCProvider
) -> None:
    c = sso_client
    done = sso_login(c, provider, "alice", "/config")
    assert done.status_code == 303
    assert done.headers["location"] == "/config"
    me = c.get("/api/me").json()
    assert me["username"] == "alice"
    assert me["role"] == "researcher"  # mapped from the "radiology" group
    assert me["via"] == "cookie"
    assert c.get("/config").status_code == 200  # the Gradio app is open to this session
    assert provider.token_auth_methods == ["client_secret_basic"]  # the code really was exchanged
    users = {u["username"]: u for u in c.get("/api/users", headers=login(c)).json()}
    assert users["alice"]["sso_provider"] == "oidc"
    assert users["alice"]["email"] == "alice@hospital.example"
    # the second login finds the same account
    c.get("/logout")
    assert c.get("/api/me").status_code == 401
    sso_login(c, provider, "alice")
    assert c.get("/api/me").json()["username"] == "alice"
    assert len([u for u in c.get("/api/users", headers=login(c)).json() if u["sso_provider"] == "oidc"]) == 1


def test_default_role_and_audit(sso_client: TestClient, provider: LocalOIDCProvider) -> None:
    c = sso_client
    sso_login(c, provider, "bob")
    assert c.get("/api/me").json()["role"] == "clinician"
    rows = c.get("/api/audit", params={"action": "sso_login"}, headers=login(c)).json()["rows"]
    assert rows[0]["username"] == "bob"
    assert rows[0]["outcome"] == "ok"


def test_disallowed_domain_is_refused(sso_client: TestClient, provider: LocalOIDCProvider) -> None:
    c = sso_client
    done = sso_login(c, provider, "mallory")
    assert done.status_code == 303
    assert done.headers["location"].startswith("/login?error=")
    assert "hospital.example" in c.get(done.headers["location"]).text
    assert c.get("/api/me").status_code == 401
    rows = c.get("/api/audit", params={"action": "sso_login", "outcome": "denied"}, headers=login(c)).json()["rows"]
    assert "hospital.example" in rows[0]["detail"]


def test_a_disabled_sso_user_cannot_sign_in(sso_client: TestClient, provider: LocalOIDCProvider) -> None:
    c = sso_client
    sso_login(c, provider, "bob")
    c.get("/logout")
    assert c.patch("/api/users/bob", json={"active": False}, headers=login(c)).status_code == 200
    done = sso_login(c, provider, "bob")
    assert done.headers["location"].startswith("/login?error=")
    assert c.get("/api/me").status_code == 401


def test_forged_callbacks_are_refused(sso_client: TestClient, provider: LocalOIDCProvider) -> None:
    c = sso_client
    # a callback without a flow started by this browser (no state cookie): CSRF on the OAuth flow
    forged = c.get("/auth/callback/oidc?code=abc&state=xyz", follow_redirects=False)
    assert forged.status_code == 303
    assert forged.headers["location"].startswith("/login?error=")
    # a started flow whose state does not match
    c.get("/login/sso/oidc", follow_redirects=False)
    wrong = c.get("/auth/callback/oidc?code=abc&state=not-the-state", follow_redirects=False)
    assert wrong.headers["location"].startswith("/login?error=")
    assert c.get("/api/me").status_code == 401
    assert c.get("/login/sso/unknown", follow_redirects=False).headers["location"].startswith("/login?error=")


def test_hugging_face_oauth_is_configured_from_the_spaces_variables(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, provider: LocalOIDCProvider
) -> None:
    """On Spaces the platform injects OAUTH_CLIENT_ID/SECRET and OPENID_PROVIDER_URL; here they
    point at the local provider, so the whole Spaces flow runs for real."""
    from app import create_app

    monkeypatch.setenv("OAUTH_CLIENT_ID", "doctorai")
    monkeypatch.setenv("OAUTH_CLIENT_SECRET", "sso-secret")
    monkeypatch.setenv("OPENID_PROVIDER_URL", provider.issuer)
    spaces = Settings(**{k: v for k, v in settings.model_dump().items() if not k.startswith(("hf_", "space_"))})
    assert spaces.hf_oauth_client_id == "doctorai"
    provider.add_redirect_uri("http://testserver/auth/callback/huggingface")
    with TestClient(create_app(spaces)) as c:
        assert "Sign in with Hugging Face" in c.get("/login").text
        start = c.get("/login/sso/huggingface", follow_redirects=False)
        provider.current_user = "bob"
        back = httpx.get(start.headers["location"], follow_redirects=False, timeout=10)
        c.get(back.headers["location"], follow_redirects=False)
        me: dict[str, Any] = c.get("/api/me").json()
        assert me["username"] == "bob"
