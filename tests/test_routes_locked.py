"""Every route the app exposes refuses an anonymous request, except the few that must be public.

The routes are enumerated from the app itself (FastAPI's and the mounted Gradio app's, including
``/config``, ``/gradio_api/*``, upload and file routes), so a route added later is covered
without editing this test.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient
from starlette.routing import Mount, Route, WebSocketRoute

PUBLIC = {"/login", "/logout", "/api/health", "/api/token", "/api/token/refresh", "/favicon.ico"}


def concrete(path: str) -> str:
    """``/file={path_or_url:path}`` -> ``/file=x``: any value; the gate runs before routing."""
    return re.sub(r"\{[^}]+\}", "x", path) or "/"


def enumerate_routes(routes: list[Any], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for r in routes:
        included = getattr(r, "original_router", None)  # FastAPI's lazily included APIRouter
        if included is not None:
            out += enumerate_routes(list(included.routes), prefix + r.include_context.prefix)
        elif isinstance(r, Mount):
            sub = getattr(r, "routes", None) or getattr(getattr(r, "app", None), "routes", None)
            if sub:
                out += enumerate_routes(list(sub), prefix + r.path)
            else:  # a static-files mount
                out.append(("GET", prefix + r.path + "/x"))
        elif isinstance(r, WebSocketRoute):
            out.append(("WEBSOCKET", prefix + r.path))
        elif isinstance(r, Route) or hasattr(r, "methods"):
            for method in sorted(getattr(r, "methods", None) or {"GET"}):
                out.append((method, prefix + r.path))
    return out


def test_every_route_refuses_anonymous_requests(anon_client: TestClient) -> None:
    app = anon_client.app
    routes = enumerate_routes(list(app.routes))  # type: ignore[attr-defined]
    paths = {p for _, p in routes}
    # the enumeration really reaches into Gradio
    for expected in (
        "/config",
        "/gradio_api/upload",
        "/gradio_api/queue/join",
        "/gradio_api/info",
        "/api/predict/{model_id:path}",
    ):
        assert expected in paths, expected
    assert any(p.startswith("/gradio_api/file=") or p.startswith("/file=") for p in paths)
    checked, public = 0, 0
    for method, path in routes:
        url = concrete(path)
        if path in PUBLIC or path.startswith(("/login/sso/", "/auth/callback/")):
            public += 1
            continue
        if method == "WEBSOCKET":
            continue  # no websocket routes today; the gate closes them (code 4401) without a user
        r = anon_client.request(method, url, headers={"accept": "application/json"}, follow_redirects=False)
        assert r.status_code == 401, f"{method} {path} -> {r.status_code}"
        assert r.headers.get("www-authenticate") == "Bearer"
        if method == "GET":  # a browser is sent to the login page instead
            page = anon_client.get(url, headers={"accept": "text/html"}, follow_redirects=False)
            assert page.status_code == 303, f"GET {path} (html) -> {page.status_code}"
            assert page.headers["location"].startswith("/login")
        checked += 1
    assert checked > 60  # FastAPI's and Gradio's routes
    assert public >= 4
    # and the public ones answer without credentials
    assert anon_client.get("/api/health").status_code == 200
    assert anon_client.get("/login").status_code == 200
    assert anon_client.post("/api/token", data={"username": "x", "password": "y"}).status_code == 401


def test_unknown_paths_are_refused_too(anon_client: TestClient) -> None:
    for path in ("/nope", "/gradio_api/nope", "/static/../../etc/passwd", "/assets/index.js", "/theme.css"):
        assert anon_client.get(path, headers={"accept": "application/json"}).status_code == 401, path
