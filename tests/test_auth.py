"""Access control: passwords, lockout, tokens, sessions, CSRF, roles, rate limits, audit, headers."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from settings import Settings
from tests.conftest import ADMIN_PASSWORD, image_bytes, login


def make_client(settings: Settings, **changes: Any) -> TestClient:
    from app import create_app

    return TestClient(create_app(settings.model_copy(update=changes)))


def add_user(c: TestClient, username: str, role: str, password: str = "good-password-1") -> dict[str, str]:
    r = c.post("/api/users", json={"username": username, "password": password, "role": role}, headers=login(c))
    assert r.status_code == 201, r.text
    return login(c, username, password)


def token_pair(c: TestClient, username: str = "admin", password: str = ADMIN_PASSWORD) -> dict[str, Any]:
    r = c.post("/api/token", data={"username": username, "password": password})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def login_form(c: TestClient, next_path: str = "/") -> str:
    """GET /login and return the CSRF form value (the cookie half stays in the client)."""
    page = c.get(f"/login?next={next_path}")
    assert page.status_code == 200
    m = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert m
    return m.group(1)


# ----------------------------------------------------------------------------- passwords
def test_bcrypt_hash_and_verify() -> None:
    from auth.errors import InvalidAccount
    from auth.passwords import hash_password, verify_password

    h = hash_password("correct horse battery", rounds=4)
    assert h.startswith("$2b$04$")
    assert verify_password("correct horse battery", h)
    assert not verify_password("correct horse batterY", h)
    assert not verify_password("x" * 100, h)  # beyond bcrypt's 72 bytes: refused, no exception
    assert not verify_password("anything", None)  # SSO-only account has no password
    assert hash_password("correct horse battery", rounds=4) != h  # salted
    with pytest.raises(InvalidAccount, match="at least 8"):
        hash_password("short", rounds=4)
    with pytest.raises(InvalidAccount, match="72 bytes"):
        hash_password("é" * 40, rounds=4)


def test_default_bcrypt_cost_is_at_least_12() -> None:
    assert Settings().bcrypt_rounds >= 12


# ----------------------------------------------------------------------------- first admin
def test_first_start_creates_admin_with_a_random_password_shown_once(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    with make_client(settings, admin_password=None) as c:
        err = capsys.readouterr().err
        m = re.search(r"created user 'admin' with password\n\s+(\S+)", err)
        assert m, err
        password = m.group(1)
        assert len(password) >= 12
        assert c.post("/api/token", data={"username": "admin", "password": password}).status_code == 200
        assert c.post("/api/token", data={"username": "admin", "password": "admin"}).status_code == 401
    with make_client(settings, admin_password=None):  # second start: nothing new, nothing printed
        assert "created user" not in capsys.readouterr().err


def test_production_refuses_a_missing_or_default_secret() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(env="production")
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(env="production", secret_key="short")
    assert Settings(env="production", secret_key="k" * 40).env == "production"


# ----------------------------------------------------------------------------- password login
def test_wrong_password_unknown_user_and_disabled_user_are_refused(client: TestClient) -> None:
    add_user(client, "carol", "clinician", "carol-password")
    wrong = client.post("/api/token", data={"username": "carol", "password": "nope-nope"})
    unknown = client.post("/api/token", data={"username": "nobody", "password": "nope-nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["detail"] == unknown.json()["detail"] == "wrong username or password"  # no user enumeration
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert client.patch("/api/users/carol", json={"active": False}).status_code == 200
    disabled = client.post("/api/token", data={"username": "carol", "password": "carol-password"})
    assert disabled.status_code == 401
    assert "disabled" in disabled.json()["detail"]


def test_lockout_after_repeated_failures_then_unlock_after_backoff(settings: Settings) -> None:
    with make_client(settings, login_max_failures=3, login_lockout_s=1.0, login_ip_max_failures=100) as c:
        for _ in range(3):
            assert c.post("/api/token", data={"username": "admin", "password": "wrong-pass"}).status_code == 401
        locked = c.post("/api/token", data={"username": "admin", "password": ADMIN_PASSWORD})
        assert locked.status_code == 429  # even the right password while locked
        assert int(locked.headers["retry-after"]) >= 1
        assert "locked" in locked.json()["detail"]
        time.sleep(1.2)
        assert c.post("/api/token", data={"username": "admin", "password": ADMIN_PASSWORD}).status_code == 200
        # the next failure run starts from zero again
        assert c.post("/api/token", data={"username": "admin", "password": "wrong-pass"}).status_code == 401


def test_lockout_per_ip_covers_unknown_usernames(settings: Settings) -> None:
    with make_client(settings, login_ip_max_failures=4, login_lockout_s=30.0) as c:
        for i in range(4):
            assert c.post("/api/token", data={"username": f"guess{i}", "password": "x" * 9}).status_code == 401
        r = c.post("/api/token", data={"username": "admin", "password": ADMIN_PASSWORD})
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 30


def test_backoff_doubles_and_is_capped() -> None:
    from auth.ratelimit import backoff_s

    assert [backoff_s(n, 3, 10, 60) for n in (1, 2, 3, 4, 5, 6, 20)] == [0, 0, 10, 20, 40, 60, 60]


# ----------------------------------------------------------------------------- tokens
def test_bearer_token_expiry_and_tampering(client: TestClient, settings: Settings) -> None:
    from auth.tokens import TokenClaims, TokenCodec, resolve_secret

    good = token_pair(client)["access_token"]
    assert client.get("/api/me", headers=bearer(good)).json()["username"] == "admin"
    codec = TokenCodec(resolve_secret(settings))
    claims = codec.decode(good, "access")
    assert claims is not None
    expired = codec.encode(
        TokenClaims(claims.user_id, claims.session_id, claims.token_version, "access", time.time() - 5)
    )
    assert client.get("/api/me", headers=bearer(expired)).status_code == 401
    head, payload, sig = good.split(".")
    tampered_sig = f"{head}.{payload}.{sig[:-3]}{'AAA' if sig[-3:] != 'AAA' else 'BBB'}"
    assert client.get("/api/me", headers=bearer(tampered_sig)).status_code == 401
    import base64
    import json

    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["sub"] = "999"
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    assert client.get("/api/me", headers=bearer(f"{head}.{forged}.{sig}")).status_code == 401
    other_key = TokenCodec(b"another-secret-entirely-0123456789")
    assert client.get("/api/me", headers=bearer(other_key.encode(claims))).status_code == 401
    # a refresh token is not an access token
    refresh = token_pair(client)["refresh_token"]
    assert client.get("/api/me", headers=bearer(refresh)).status_code == 401
    assert client.get("/api/me", headers={"Authorization": "Basic YWRtaW46eA=="}).status_code == 401


def test_refresh_rotates_and_a_reused_refresh_token_fails(anon_client: TestClient) -> None:
    c = anon_client
    first = token_pair(c)
    r = c.post("/api/token/refresh", data={"refresh_token": first["refresh_token"]})
    assert r.status_code == 200
    second = r.json()
    assert c.get("/api/me", headers=bearer(second["access_token"])).status_code == 200
    # the old family is revoked by the rotation: its refresh and access tokens stop working
    assert c.post("/api/token/refresh", data={"refresh_token": first["refresh_token"]}).status_code == 401
    assert c.get("/api/me", headers=bearer(first["access_token"])).status_code == 401
    assert c.post("/api/token/refresh", json={"refresh_token": second["refresh_token"]}).status_code == 200
    assert c.post("/api/token/refresh", data={"refresh_token": second["access_token"]}).status_code == 401


def test_password_change_and_logout_revoke_tokens(client: TestClient) -> None:
    dana = add_user(client, "dana", "researcher", "dana-password-1")
    pair = token_pair(client, "dana", "dana-password-1")
    assert client.get("/api/me", headers=dana).status_code == 200
    assert client.patch("/api/users/dana", json={"password": "dana-password-2"}).status_code == 200
    assert client.get("/api/me", headers=dana).status_code == 401
    assert client.get("/api/me", headers=bearer(pair["access_token"])).status_code == 401
    assert client.post("/api/token/refresh", data={"refresh_token": pair["refresh_token"]}).status_code == 401
    fresh = token_pair(client, "dana", "dana-password-2")
    assert client.post("/api/logout", headers=bearer(fresh["access_token"])).status_code == 204
    assert client.get("/api/me", headers=bearer(fresh["access_token"])).status_code == 401
    assert client.post("/api/token/refresh", data={"refresh_token": fresh["refresh_token"]}).status_code == 401


# ----------------------------------------------------------------------------- roles
def test_roles_are_enforced_on_the_server(client: TestClient, png_bytes: bytes) -> None:
    clin = add_user(client, "dr-clin", "clinician")
    res = add_user(client, "res-1", "researcher")
    for who in (clin, res):
        assert client.get("/api/users", headers=who).status_code == 403
        assert (
            client.post(
                "/api/users", json={"username": "x-y", "password": "whatever-123", "role": "admin"}, headers=who
            ).status_code
            == 403
        )
        assert client.patch("/api/users/admin", json={"active": False}, headers=who).status_code == 403
        assert client.get("/api/audit", headers=who).status_code == 403
        assert client.get("/metrics", headers=who).status_code == 403
        r = client.post("/api/predict/tumor", files={"file": ("a.png", png_bytes, "image/png")}, headers=who)
        assert r.status_code == 200  # both may analyse
    me = client.get("/api/me", headers=res).json()
    assert "research" in me["permissions"]
    assert "manage_users" not in me["permissions"]
    assert client.get("/api/users").status_code == 200  # admin
    # the last admin cannot lock everyone out
    r = client.patch("/api/users/admin", json={"role": "clinician"})
    assert r.status_code == 400
    assert "last active admin" in r.json()["detail"]


def test_a_role_change_takes_effect_at_once(client: TestClient) -> None:
    eve = add_user(client, "eve", "clinician", "eve-password-1")
    assert client.patch("/api/users/eve", json={"role": "admin"}).status_code == 200
    assert client.get("/api/users", headers=eve).status_code == 401  # old token revoked with the change
    assert client.get("/api/users", headers=login(client, "eve", "eve-password-1")).status_code == 200


# ----------------------------------------------------------------------------- browser login
def test_login_form_requires_the_csrf_token(anon_client: TestClient) -> None:
    c = anon_client
    creds = {"username": "admin", "password": ADMIN_PASSWORD, "next": "/"}
    assert c.post("/login", data=creds, follow_redirects=False).status_code == 403  # no token, no cookie
    csrf = login_form(c)
    assert c.post("/login", data={**creds, "csrf_token": "f" * 64}, follow_redirects=False).status_code == 403
    other = TestClient(c.app)  # the right token without its cookie (another browser) fails too
    assert other.post("/login", data={**creds, "csrf_token": csrf}, follow_redirects=False).status_code == 403
    csrf = login_form(c)  # each rendering of the form sets a new token pair
    r = c.post("/login", data={**creds, "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/"
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("doctorai_session="))
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Secure" not in cookie
    assert c.get("/api/me").json() == {
        "username": "admin",
        "role": "admin",
        "via": "cookie",
        "permissions": ["analyse", "manage_users", "research", "view_audit"],
    }
    assert c.get("/", headers={"accept": "text/html"}, follow_redirects=False).status_code == 200


def test_login_redirects_only_to_local_paths_and_logout_ends_the_session(anon_client: TestClient) -> None:
    c = anon_client
    assert c.get("/", headers={"accept": "text/html"}, follow_redirects=False).headers["location"] == "/login"
    r = c.get("/config?x=1", headers={"accept": "text/html"}, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Fconfig%3Fx%3D1"
    for evil in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        csrf = login_form(c)
        r = c.post(
            "/login",
            data={"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": csrf, "next": evil},
            follow_redirects=False,
        )
        assert r.status_code == 303
        assert r.headers["location"] == "/"
        assert c.get("/api/me").status_code == 200
        out = c.get("/logout", follow_redirects=False)
    assert out.status_code == 303
    assert out.headers["location"].startswith("/login")
    assert c.get("/api/me").status_code == 401
    assert c.get("/config").status_code == 401


def test_wrong_password_on_the_form_shows_the_error(anon_client: TestClient) -> None:
    c = anon_client
    csrf = login_form(c)
    r = c.post("/login", data={"username": "admin", "password": "bad-bad-bad", "csrf_token": csrf, "next": "/"})
    assert r.status_code == 401
    assert "wrong username or password" in r.text
    assert "Research use, not a diagnosis" in r.text


def test_expired_session_cookie_is_refused(anon_client: TestClient) -> None:
    from sqlalchemy import update

    from auth.db import UserSession, utcnow

    c = anon_client
    csrf = login_form(c)
    c.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": csrf})
    assert c.get("/api/me").status_code == 200
    ctx = c.app.state.auth  # type: ignore[attr-defined]
    with ctx.db.session() as s:
        s.execute(update(UserSession).values(expires_at=utcnow()))
    assert c.get("/api/me").status_code == 401
    assert c.get("/", headers={"accept": "text/html"}, follow_redirects=False).headers["location"] == "/login"


def test_a_forged_session_cookie_is_refused(anon_client: TestClient) -> None:
    anon_client.cookies.set("doctorai_session", "admin")
    assert anon_client.get("/api/me").status_code == 401
    from itsdangerous import URLSafeTimedSerializer

    anon_client.cookies.set("doctorai_session", URLSafeTimedSerializer("change-me", salt="doctorai-session").dumps("x"))
    assert anon_client.get("/api/me").status_code == 401


# ----------------------------------------------------------------------------- rate limits
def test_analyses_per_user_per_minute(settings: Settings, png_bytes: bytes) -> None:
    with make_client(settings, analyses_per_minute=2) as c:
        h = login(c)
        files = {"file": ("a.png", png_bytes, "image/png")}
        assert c.post("/api/predict/tumor", files=files, headers=h).status_code == 200
        assert c.post("/api/predict/tumor", files=files, headers=h).status_code == 200
        r = c.post("/api/predict/tumor", files=files, headers=h)
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert "per minute" in r.json()["detail"]
        rows = c.get("/api/audit", params={"outcome": "denied", "action": "predict"}, headers=h).json()["rows"]
        assert rows
        assert "TooManyRequests" in rows[0]["detail"]


# ----------------------------------------------------------------------------- audit
def test_audit_rows_for_success_rejection_and_error_without_image_bytes(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    pixels = np.random.default_rng(7).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    png = image_bytes(pixels)
    ok = client.post(
        "/api/predict/tumor", files={"file": ("scan.png", png, "image/png")}, headers={"X-Request-ID": "req-ok-1"}
    )
    assert ok.status_code == 200
    bad = b"this is not an image, it is a text file" * 10
    rejected = client.post("/api/predict/tumor", files={"file": ("notes.png", bad, "image/png")})
    assert rejected.status_code == 415

    runtime = client.app.state.runtime  # type: ignore[attr-defined]

    def boom(*_: Any, **__: Any) -> Any:
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(runtime.analyzer, "analyze", boom)
    other = image_bytes(np.zeros((40, 40, 3), np.uint8))
    failed = TestClient(client.app, raise_server_exceptions=False, headers=dict(client.headers)).post(
        "/api/predict/tumor", files={"file": ("z.png", other, "image/png")}
    )
    assert failed.status_code == 500
    assert "simulated" not in failed.text
    assert "Traceback" not in failed.text

    rows = client.get("/api/audit", params={"action": "predict"}).json()["rows"]
    by_outcome = {r["outcome"]: r for r in rows}
    assert set(by_outcome) == {"ok", "rejected", "error"}
    good = by_outcome["ok"]
    assert good["username"] == "admin"
    assert good["role"] == "admin"
    assert good["model_id"] == "tumor"
    assert good["model_version"] == "1.0.0"
    assert good["input_sha256"] == hashlib.sha256(png).hexdigest() == ok.json()["sha256"]
    assert good["result"].startswith(ok.json()["label"])
    assert good["latency_ms"] > 0
    assert good["client_ip"] == "testclient"
    assert good["request_id"] == "req-ok-1"
    assert by_outcome["rejected"]["input_sha256"] == hashlib.sha256(bad).hexdigest()
    assert "UnsupportedImage" in by_outcome["rejected"]["detail"]
    assert by_outcome["error"]["detail"] == "RuntimeError"
    assert by_outcome["error"]["input_sha256"] == hashlib.sha256(other).hexdigest()
    # no image bytes anywhere in the database files (main db + WAL)
    raw = b"".join(p.read_bytes() for p in Path(settings.data_dir).glob("doctorai.db*"))
    assert raw
    for blob in (png[100:164], bad[:40]):
        assert blob not in raw
    assert not (Path(settings.data_dir) / "audit_inputs").exists()
    csv = client.get("/api/audit", params={"format": "csv", "model_id": "tumor"})
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0].startswith("id,ts,request_id,username")
    assert len(csv.text.splitlines()) == 4
    assert client.get("/api/audit", params={"outcome": "ok", "user": "nobody"}).json()["rows"] == []


def test_audit_is_append_only(client: TestClient) -> None:
    from sqlalchemy import text

    from auth.errors import DatabaseUnavailable

    ctx = client.app.state.auth  # type: ignore[attr-defined]
    for stmt in ("UPDATE audit_events SET outcome = 'ok'", "DELETE FROM audit_events"):
        with pytest.raises(Exception, match="append-only") as info, ctx.db.session() as s:
            s.execute(text(stmt))
        assert not isinstance(info.value, DatabaseUnavailable)


def test_keeping_inputs_is_opt_in(settings: Settings, png_bytes: bytes) -> None:
    import hashlib

    with make_client(settings, audit_keep_inputs=True) as c:
        r = c.post("/api/predict/tumor", files={"file": ("a.png", png_bytes, "image/png")}, headers=login(c))
        assert r.status_code == 200
    kept = Path(settings.data_dir) / "audit_inputs" / hashlib.sha256(png_bytes).hexdigest()
    assert kept.read_bytes() == png_bytes


def test_logins_are_audited(client: TestClient) -> None:
    client.post("/api/token", data={"username": "admin", "password": "wrong-password"})
    rows = client.get("/api/audit", params={"action": "token"}).json()["rows"]
    assert [r["outcome"] for r in rows[:2]] == ["denied", "ok"]
    assert "wrong username or password" in rows[0]["detail"]


# ----------------------------------------------------------------------------- headers, CORS, limits
def test_security_headers(anon_client: TestClient) -> None:
    page = anon_client.get("/login")
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "script-src" not in page.headers["content-security-policy"]  # the login page runs no script
    assert page.headers["referrer-policy"] == "strict-origin-when-cross-origin"
    assert "strict-transport-security" not in page.headers  # plain http
    https = TestClient(anon_client.app, base_url="https://testserver")
    assert "max-age=" in https.get("/login").headers["strict-transport-security"]
    assert "Secure" in https.get("/login").headers["set-cookie"]


def test_cors_is_closed_unless_configured(settings: Settings) -> None:
    evil = {"Origin": "http://localhost:9999"}  # Gradio alone would grant localhost origins
    with make_client(settings) as c:
        h = login(c)
        r = c.get("/config", headers={**h, **evil})
        assert "access-control-allow-origin" not in r.headers
    with make_client(settings, cors_origins=["https://portal.example.org"]) as c:
        h = login(c)
        ok = c.get("/api/me", headers={**h, "Origin": "https://portal.example.org"})
        assert ok.headers["access-control-allow-origin"] == "https://portal.example.org"
        pre = c.options("/api/me", headers={"Origin": "https://portal.example.org"})
        assert pre.status_code == 204
        assert "Authorization" in pre.headers["access-control-allow-headers"]
        assert "access-control-allow-origin" not in c.get("/api/me", headers={**h, **evil}).headers


def test_oversized_bodies_are_refused_before_reading(client: TestClient) -> None:
    # TestClient buffers a streamed body before the app sees it; that the server stops reading
    # early over a real socket is checked in tests/test_hostile.py.
    def body() -> Any:
        for _ in range(40):
            yield b"x" * 65536

    r = client.post("/api/chat", content=body(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "limit" in r.json()["detail"]
    big = client.post(
        "/api/chat", content=b"{}", headers={"content-type": "application/json", "content-length": str(10**9)}
    )
    assert big.status_code == 413
