"""Sanity checks for tests/oidc_provider.py: a relying party's view of the local OIDC provider.

The authorization-code flow is driven with plain httpx (no browser): discovery, authorize (state,
nonce, PKCE S256), the code read from the redirect's ``Location`` (the redirect URI itself is never
fetched), the token exchange, id_token verification against the JWKS with joserfc, and userinfo.
Then the same provider is used by Authlib's own clients (httpx ``OAuth2Client`` and the Starlette
``OAuth`` registry the app uses) to show interoperability.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from tests.oidc_provider import LocalOIDCProvider, OIDCUser

CLIENT_ID = "doctorai"
CLIENT_SECRET = "s3cret"
# Nothing listens here: the flow stops at the provider's 302 to it.
REDIRECT_URI = "http://127.0.0.1:9/auth/callback"
SCOPE = "openid email profile"
USERS: dict[str, Any] = {
    "alice": {"email": "alice@example.org", "name": "Alice Doe", "groups": ["clinicians", "admins"]},
    "bob": {"sub": "b-42", "email": "bob@example.org", "name": "Bob Roe"},
}


@pytest.fixture(autouse=True)
def _no_insecure_transport_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loopback HTTP must work without Authlib's escape hatch, on both sides.
    monkeypatch.delenv("AUTHLIB_INSECURE_TRANSPORT", raising=False)


@pytest.fixture
def op() -> Iterator[LocalOIDCProvider]:
    with LocalOIDCProvider(CLIENT_ID, CLIENT_SECRET, USERS, [REDIRECT_URI]) as provider:
        yield provider


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10, follow_redirects=False) as client:
        yield client


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize(http: httpx.Client, op: LocalOIDCProvider, **params: str) -> dict[str, str]:
    """GET the authorize endpoint; return the query of the redirect back to REDIRECT_URI."""
    query = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI, "scope": SCOPE}
    resp = http.get(op.metadata()["authorization_endpoint"], params={**query, **params})
    assert resp.status_code == 302, resp.text
    location = resp.headers["location"]
    assert location.startswith(REDIRECT_URI + "?"), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def exchange(http: httpx.Client, op: LocalOIDCProvider, code: str, **extra: str) -> httpx.Response:
    """client_secret_post token request."""
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT_URI,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        **extra,
    }
    return http.post(op.metadata()["token_endpoint"], data=data)


def verify_id_token(http: httpx.Client, meta: dict[str, Any], id_token: str, nonce: str) -> dict[str, Any]:
    keys = KeySet.import_key_set(http.get(meta["jwks_uri"]).json())
    token = jwt.decode(id_token, keys, algorithms=meta["id_token_signing_alg_values_supported"])
    assert token.header["alg"] == "RS256"
    registry = jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": meta["issuer"]},
        aud={"essential": True, "value": CLIENT_ID},
        nonce={"essential": True, "value": nonce},
        exp={"essential": True},
        iat={"essential": True},
        sub={"essential": True},
    )
    registry.validate(token.claims)
    return dict(token.claims)


def test_discovery_and_jwks(op: LocalOIDCProvider, http: httpx.Client) -> None:
    assert op.issuer.startswith("http://127.0.0.1:")
    meta = http.get(op.metadata_url).json()
    assert meta["issuer"] == op.issuer
    for name in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri"):
        assert meta[name].startswith(op.issuer + "/")
    assert meta["response_types_supported"] == ["code"]
    assert meta["id_token_signing_alg_values_supported"] == ["RS256"]
    assert {"openid", "email", "profile"} <= set(meta["scopes_supported"])
    assert {"sub", "email", "email_verified", "name", "preferred_username", "groups"} <= set(meta["claims_supported"])
    assert set(meta["token_endpoint_auth_methods_supported"]) == {"client_secret_basic", "client_secret_post"}
    assert meta["code_challenge_methods_supported"] == ["S256"]

    jwks = http.get(meta["jwks_uri"]).json()
    assert [k["kid"] for k in jwks["keys"]] == [op.kid]
    assert jwks["keys"][0]["kty"] == "RSA"
    assert "d" not in jwks["keys"][0]  # public half only


def test_code_flow_with_pkce_nonce_and_client_secret_post(op: LocalOIDCProvider, http: httpx.Client) -> None:
    meta = http.get(op.metadata_url).json()
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    verifier, challenge = pkce_pair()

    back = authorize(
        http, op, state=state, nonce=nonce, code_challenge=challenge, code_challenge_method="S256", login_hint="alice"
    )
    assert back["state"] == state
    assert op.authorize_requests[-1]["code_challenge"] == challenge

    resp = exchange(http, op, back["code"], code_verifier=verifier)
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    token = resp.json()
    assert token["token_type"].lower() == "bearer"
    assert set(token["scope"].split()) == {"openid", "email", "profile"}
    assert op.token_auth_methods == ["client_secret_post"]

    claims = verify_id_token(http, meta, token["id_token"], nonce)
    assert claims["sub"] == "sub-alice"
    assert claims["email"] == "alice@example.org"
    assert claims["email_verified"] is True
    assert claims["name"] == "Alice Doe"
    assert claims["preferred_username"] == "alice"
    assert claims["groups"] == ["clinicians", "admins"]

    info = http.get(meta["userinfo_endpoint"], headers={"Authorization": f"Bearer {token['access_token']}"})
    assert info.status_code == 200, info.text
    assert info.json() == {
        "sub": "sub-alice",
        "email": "alice@example.org",
        "email_verified": True,
        "name": "Alice Doe",
        "preferred_username": "alice",
        "groups": ["clinicians", "admins"],
    }


def test_current_user_and_client_secret_basic(op: LocalOIDCProvider, http: httpx.Client) -> None:
    op.current_user = "bob"
    nonce = secrets.token_urlsafe(16)
    back = authorize(http, op, state="s1", nonce=nonce)
    resp = http.post(
        op.metadata()["token_endpoint"],
        data={"grant_type": "authorization_code", "code": back["code"], "redirect_uri": REDIRECT_URI},
        auth=(CLIENT_ID, CLIENT_SECRET),
    )
    assert resp.status_code == 200, resp.text
    assert op.token_auth_methods == ["client_secret_basic"]
    claims = verify_id_token(http, op.metadata(), resp.json()["id_token"], nonce)
    assert (claims["sub"], claims["preferred_username"]) == ("b-42", "bob")
    assert "groups" not in claims


def test_login_hint_beats_current_user_and_matches_email(op: LocalOIDCProvider, http: httpx.Client) -> None:
    op.current_user = "bob"
    nonce = secrets.token_urlsafe(16)
    back = authorize(http, op, nonce=nonce, login_hint="alice@example.org")
    claims = verify_id_token(http, op.metadata(), exchange(http, op, back["code"]).json()["id_token"], nonce)
    assert claims["sub"] == "sub-alice"


def test_add_user_at_runtime(op: LocalOIDCProvider, http: httpx.Client) -> None:
    op.add_user(OIDCUser(preferred_username="carol", email="carol@example.org", name="Carol", email_verified=False))
    back = authorize(http, op, login_hint="carol")
    token = exchange(http, op, back["code"]).json()
    info = http.get(op.metadata()["userinfo_endpoint"], headers={"Authorization": f"Bearer {token['access_token']}"})
    assert info.json() == {
        "sub": "sub-carol",
        "email": "carol@example.org",
        "email_verified": False,
        "name": "Carol",
        "preferred_username": "carol",
    }


def test_scope_filters_claims(op: LocalOIDCProvider, http: httpx.Client) -> None:
    back = authorize(http, op, scope="openid", login_hint="bob")
    token = exchange(http, op, back["code"]).json()
    info = http.get(op.metadata()["userinfo_endpoint"], headers={"Authorization": f"Bearer {token['access_token']}"})
    assert info.json() == {"sub": "b-42"}


def test_wrong_client_secret_is_invalid_client(op: LocalOIDCProvider, http: httpx.Client) -> None:
    back = authorize(http, op, login_hint="alice")
    resp = exchange(http, op, back["code"], client_secret="wrong")
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"

    resp = http.post(
        op.metadata()["token_endpoint"],
        data={"grant_type": "authorization_code", "code": back["code"], "redirect_uri": REDIRECT_URI},
        auth=(CLIENT_ID, "wrong"),
    )
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"
    assert resp.headers["www-authenticate"].startswith("Basic ")
    # The code survived both failures.
    assert exchange(http, op, back["code"]).status_code == 200


def test_reused_code_is_invalid_grant(op: LocalOIDCProvider, http: httpx.Client) -> None:
    back = authorize(http, op, login_hint="alice")
    assert exchange(http, op, back["code"]).status_code == 200
    again = exchange(http, op, back["code"])
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


def test_wrong_pkce_verifier_is_invalid_grant(op: LocalOIDCProvider, http: httpx.Client) -> None:
    _, challenge = pkce_pair()
    other_verifier, _ = pkce_pair()
    back = authorize(http, op, login_hint="alice", code_challenge=challenge, code_challenge_method="S256")
    resp = exchange(http, op, back["code"], code_verifier=other_verifier)
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("hint", ["mallory", None])
def test_unknown_or_missing_user_is_access_denied(op: LocalOIDCProvider, http: httpx.Client, hint: str | None) -> None:
    params = {"state": "xyz"} | ({"login_hint": hint} if hint else {})
    back = authorize(http, op, **params)
    assert back["error"] == "access_denied"
    assert back["state"] == "xyz"
    assert "code" not in back


def test_redirect_uri_must_be_registered(op: LocalOIDCProvider, http: httpx.Client) -> None:
    other = "http://127.0.0.1:10/elsewhere"
    query = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": other, "scope": SCOPE}
    query["login_hint"] = "alice"
    resp = http.get(op.metadata()["authorization_endpoint"], params=query)
    assert resp.status_code == 400  # no redirect to an unregistered URI
    assert resp.json()["error"] == "invalid_request"

    op.add_redirect_uri(other)
    resp = http.get(op.metadata()["authorization_endpoint"], params=query)
    assert resp.status_code == 302
    assert resp.headers["location"].startswith(other + "?code=")


def test_allow_loopback_redirects(http: httpx.Client) -> None:
    with LocalOIDCProvider(CLIENT_ID, CLIENT_SECRET, USERS, allow_loopback_redirects=True) as op:
        query = {"response_type": "code", "client_id": CLIENT_ID, "scope": SCOPE, "login_hint": "bob"}
        for uri in ("http://127.0.0.1:5555/cb", "http://localhost:1/x"):
            resp = http.get(op.metadata()["authorization_endpoint"], params={**query, "redirect_uri": uri})
            assert resp.status_code == 302, resp.text
        resp = http.get(op.metadata()["authorization_endpoint"], params={**query, "redirect_uri": "http://evil.test/"})
        assert resp.status_code == 400


def test_require_pkce(http: httpx.Client) -> None:
    with LocalOIDCProvider(CLIENT_ID, CLIENT_SECRET, USERS, [REDIRECT_URI], require_pkce=True) as op:
        back = authorize(http, op, login_hint="alice", state="s")
        assert back["error"] == "invalid_request"
        _, challenge = pkce_pair()
        back = authorize(http, op, login_hint="alice", code_challenge=challenge, code_challenge_method="plain")
        assert back["error"] == "invalid_request"  # S256 only


def test_userinfo_needs_a_valid_bearer_token(op: LocalOIDCProvider, http: httpx.Client) -> None:
    url = op.metadata()["userinfo_endpoint"]
    assert http.get(url).status_code == 401
    resp = http.get(url, headers={"Authorization": "Bearer nope"})
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_token"


def test_authlib_httpx_client_interoperates(op: LocalOIDCProvider) -> None:
    from authlib.integrations.httpx_client import OAuth2Client
    from authlib.oidc.core import CodeIDToken

    meta = op.metadata()
    nonce = secrets.token_urlsafe(16)
    verifier = secrets.token_urlsafe(48)
    with OAuth2Client(
        CLIENT_ID,
        CLIENT_SECRET,
        scope=SCOPE,
        redirect_uri=REDIRECT_URI,
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_basic",
    ) as client:
        url, state = client.create_authorization_url(
            meta["authorization_endpoint"], nonce=nonce, code_verifier=verifier, login_hint="alice"
        )
        resp = httpx.get(url, follow_redirects=False)
        assert resp.status_code == 302
        token = client.fetch_token(
            meta["token_endpoint"], authorization_response=resp.headers["location"], state=state, code_verifier=verifier
        )
        assert op.token_auth_methods == ["client_secret_basic"]

        # Authlib's own RP-side id_token checks (iss, aud, nonce, exp, iat, at_hash).
        keys = KeySet.import_key_set(client.get(meta["jwks_uri"]).json())
        decoded = jwt.decode(token["id_token"], keys, registry=JWSRegistry(algorithms=["RS256"]))
        claims = CodeIDToken(
            decoded.claims,
            decoded.header,
            {"iss": {"values": [meta["issuer"]]}},
            {"nonce": nonce, "client_id": CLIENT_ID, "access_token": token["access_token"]},
        )
        claims.validate(leeway=60)
        assert claims["sub"] == "sub-alice"

        info = client.get(meta["userinfo_endpoint"]).json()  # the client sends its bearer token
        assert info["preferred_username"] == "alice"


def test_authlib_starlette_client_interoperates(op: LocalOIDCProvider) -> None:
    """The app's integration path: Starlette ``OAuth`` registry with ``server_metadata_url``."""
    from authlib.integrations.starlette_client import OAuth
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.sessions import SessionMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
    from starlette.testclient import TestClient

    oauth = OAuth()
    oauth.register(
        "sso",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        server_metadata_url=op.metadata_url,
        client_kwargs={"scope": SCOPE, "code_challenge_method": "S256"},
    )

    async def login(request: Request) -> Response:
        callback = str(request.url_for("callback"))
        response: Response = await oauth.sso.authorize_redirect(request, callback, login_hint=request.query_params["u"])
        return response

    async def callback(request: Request) -> Response:
        token = await oauth.sso.authorize_access_token(request)
        info = await oauth.sso.userinfo(token=token)
        return JSONResponse({"id_token_claims": dict(token["userinfo"]), "userinfo": dict(info)})

    app = Starlette(
        routes=[Route("/login", login), Route("/auth/callback", callback, name="callback")],
        middleware=[Middleware(SessionMiddleware, secret_key="test")],
    )
    op.add_redirect_uri("http://testserver/auth/callback")  # TestClient's base URL
    with TestClient(app, follow_redirects=False) as rp:
        to_op = rp.get("/login", params={"u": "alice"})
        assert to_op.status_code == 302
        assert to_op.headers["location"].startswith(op.issuer + "/authorize?")
        to_rp = httpx.get(to_op.headers["location"], follow_redirects=False)
        assert to_rp.status_code == 302
        done = rp.get(to_rp.headers["location"])
        assert done.status_code == 200, done.text

    body = done.json()
    assert body["id_token_claims"]["sub"] == "sub-alice"
    assert body["id_token_claims"]["groups"] == ["clinicians", "admins"]
    assert body["userinfo"]["email"] == "alice@example.org"
    sent = op.authorize_requests[-1]
    assert sent["login_hint"] == "alice"
    assert sent["code_challenge_method"] == "S256"
    assert sent["nonce"]
    assert op.token_auth_methods == ["client_secret_basic"]  # Authlib's default
