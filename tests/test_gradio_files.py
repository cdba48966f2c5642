"""Issue #15, written as the attacks: nobody reads, analyses or deletes a file that is not theirs.

A live server (``python app.py`` on loopback, its own ``GRADIO_TEMP_DIR``) with two clinicians,
alice (the attacker) and bob (the victim). The events are enumerated from the app's own
``/config``, so a tab added later is attacked too: every input of every event that takes a
``FileData`` (the image tabs' uploads, the chat history) is sent, through ``/gradio_api/queue/join``
(how the browser calls events, private ones included) and ``/gradio_api/call/<api_name>``, a path
outside the cache (``/etc/hostname``, the accounts database, the secret key, a file in the temp
dir), ``..`` and a symlink out of the cache, and bob's upload. Nothing may be copied into the
cache, come back, or be deleted; ``GET /gradio_api/file=`` serves a cached file to its owner only.
A positive control (alice analyses her own upload) keeps the test from passing vacuously.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import image_bytes, run_app, token_headers

pytestmark = pytest.mark.slow
PASSWORD = "correct-horse-battery-staple-1"


@dataclass
class Srv:
    url: str
    data: Path
    cache: Path
    alice: dict[str, str]
    bob: dict[str, str]
    admin: dict[str, str]

    def client(self, headers: dict[str, str]) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, chat_registry_file: Path) -> Iterator[Srv]:
    root = tmp_path_factory.mktemp("files-attack")
    cache = root / "gradio"
    with run_app(
        root / "data",
        DOCTORAI_MODEL_DIR=str(tiny_model_dir),
        DOCTORAI_REGISTRY_FILE=str(chat_registry_file),
        DOCTORAI_DEVICE="cpu",
        GRADIO_TEMP_DIR=str(cache),
        DOCTORAI_UPLOADS_PER_MINUTE="12",
        DOCTORAI_UPLOAD_QUOTA_MB="3",
        DOCTORAI_ANALYSES_PER_MINUTE="0",
    ) as url:
        admin = token_headers(url)
        with httpx.Client(base_url=url, headers=admin, timeout=30) as c:
            for name in ("alice", "bob", "carol"):
                r = c.post("/api/users", json={"username": name, "password": PASSWORD, "role": "clinician"})
                assert r.status_code == 201, r.text
        yield Srv(
            url, root / "data", cache, token_headers(url, "alice", PASSWORD), token_headers(url, "bob", PASSWORD), admin
        )


def _png(seed: int) -> bytes:
    return image_bytes(np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8))


def upload(c: httpx.Client, data: bytes, name: str = "scan.png") -> str:
    r = c.post("/gradio_api/upload", files=[("files", (name, data, "image/png"))])
    assert r.status_code == 200, r.text
    (path,) = r.json()
    return str(path)


def file_data(path: str) -> dict[str, Any]:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def run_event(c: httpx.Client, fn_index: int, data: list[Any]) -> dict[str, Any]:
    """Call one event as the browser does; the final message (``process_completed``) or the refusal."""
    session = secrets.token_hex(8)
    r = c.post(
        "/gradio_api/queue/join",
        json={"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None},
    )
    if r.status_code != 200:
        return {"refused": r.status_code, "text": r.text}
    with c.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data:"):
                continue
            msg = json.loads(line[5:])
            if msg.get("msg") in ("process_completed", "unexpected_error"):
                return dict(msg)
    raise AssertionError("the event stream ended without a result")


def call_named(c: httpx.Client, api_name: str, data: list[Any]) -> str:
    """``/gradio_api/call/<name>``, as the issue's reproduction does; the whole SSE text (or refusal)."""
    r = c.post(f"/gradio_api/call/{api_name}", json={"data": data})
    if r.status_code != 200:
        return f"refused {r.status_code}: {r.text}"
    return c.get(f"/gradio_api/call/{api_name}/{r.json()['event_id']}").text


def file_inputs(config: dict[str, Any]) -> list[tuple[dict[str, Any], int, str]]:
    """(event, input position, component type) for every input of every event that takes a file."""
    comps = {c["id"]: c for c in config["components"]}
    out = []
    for dep in config["dependencies"]:
        for pos, cid in enumerate(dep["inputs"]):
            if "gradio.FileData" in json.dumps(comps[cid].get("api_info", {})) or "FileData" in json.dumps(
                comps[cid].get("api_info_as_input", {})
            ):
                out.append((dep, pos, comps[cid]["type"]))
    return out


def payload(config: dict[str, Any], dep: dict[str, Any], pos: int, kind: str, path: str) -> list[Any]:
    comps = {c["id"]: c for c in config["components"]}
    values: list[Any] = []
    for i, cid in enumerate(dep["inputs"]):
        if i != pos:
            values.append(comps[cid].get("props", {}).get("value"))
        elif kind == "chatbot":
            values.append([{"role": "user", "content": [{"type": "file", "file": file_data(path)}]}])
        elif kind == "gallery":
            values.append([{"image": file_data(path), "caption": None}])
        else:
            values.append(file_data(path))
    return values


def cached_copies(cache: Path, secret: bytes) -> list[Path]:
    found = []
    for p in cache.rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                if p.read_bytes() == secret:
                    found.append(p)
            except OSError:
                pass
    return found


def test_no_event_reads_a_file_that_is_not_the_callers(srv: Srv) -> None:
    with srv.client(srv.alice) as alice, srv.client(srv.bob) as bob:
        config = alice.get("/config").json()
        targets = file_inputs(config)
        kinds = {k for _, _, k in targets}
        # the enumeration reaches every image tab's upload and the chat history
        assert "file" in kinds, kinds
        assert "chatbot" in kinds, kinds
        assert sum(1 for d, _, k in targets if k == "file" and (d.get("api_name") or "").startswith("predict_")) >= 5

        # Positive control: alice's own upload is analysed.
        mine = upload(alice, _png(1))
        predict = next(d for d, _, k in targets if k == "file" and d["api_name"] == "predict_tumor")
        ok = run_event(alice, predict["id"], payload(config, predict, 0, "file", mine))
        assert ok.get("success") is True, ok

        # What alice must not get at.
        outside = Path(tempfile.gettempdir()) / f"doctorai-secret-{secrets.token_hex(4)}.txt"
        outside.write_bytes(b"temp-dir secret " + secrets.token_bytes(8))
        bobs = upload(bob, _png(2), "bob-scan.png")
        bobs_bytes = Path(bobs).read_bytes()
        link_dir = srv.cache / ("evil" + secrets.token_hex(4))
        link_dir.mkdir(parents=True)
        (link_dir / "key.png").symlink_to(srv.data / ".secret_key")
        hostile = {
            "/etc/hostname": Path("/etc/hostname"),
            "accounts database": srv.data / "doctorai.db",
            "secret key": srv.data / ".secret_key",
            "temp dir file": outside,
            "dotdot": Path(str(srv.cache) + "/x/.." + "/.." * len(srv.cache.parts) + str(srv.data / ".secret_key")),
            "symlink": link_dir / "key.png",
        }
        try:
            for dep, pos, kind in targets:
                for what, path in hostile.items():
                    secret = path.resolve().read_bytes()
                    result = run_event(alice, dep["id"], payload(config, dep, pos, kind, str(path)))
                    where = f"event {dep['id']} ({dep.get('api_name')}) input {pos} <- {what}"
                    assert result.get("success") is not True or kind == "chatbot", where
                    assert not cached_copies(srv.cache, secret), f"{where}: copied into Gradio's cache"
                    assert secret.decode("latin-1")[:40] not in json.dumps(result), where
                    if dep.get("api_name") and dep.get("api_visibility") != "private":
                        text = call_named(alice, dep["api_name"], payload(config, dep, pos, kind, str(path)))
                        assert not cached_copies(srv.cache, secret), f"{where} via /call: copied"
                        assert '"path"' not in text or str(srv.cache) not in text, where
                # bob's upload: alice cannot analyse it, and it is not deleted under bob
                result = run_event(alice, dep["id"], payload(config, dep, pos, kind, bobs))
                assert result.get("success") is not True or kind == "chatbot", f"event {dep['id']} on bob's file"
                assert Path(bobs).read_bytes() == bobs_bytes, f"event {dep['id']} deleted bob's upload"
        finally:
            outside.unlink(missing_ok=True)
        # and bob can still analyse his own file
        assert run_event(bob, predict["id"], payload(config, predict, 0, "file", bobs)).get("success") is True


def test_file_route_serves_a_cached_file_to_its_owner_only(srv: Srv) -> None:
    with srv.client(srv.alice) as alice, srv.client(srv.bob) as bob:
        bobs = upload(bob, _png(3), "bob-only.png")
        assert bob.get(f"/gradio_api/file={bobs}").status_code == 200
        assert bob.get(f"/gradio_api/file={bobs}").content == Path(bobs).read_bytes()
        for path in (
            bobs,
            "/etc/hostname",
            str(srv.data / "doctorai.db"),
            str(srv.data / ".secret_key"),
            str(srv.cache) + "/../" + "../" * len(srv.cache.parts) + "etc/hostname",
        ):
            for route in ("/gradio_api/file=", "/gradio_api/file/"):
                r = alice.get(route + path)
                assert r.status_code in (403, 404), f"{route}{path} -> {r.status_code}"
                assert r.content != Path(bobs).read_bytes()
        # An output of an event (bob's heatmap) is bob's too.
        config = bob.get("/config").json()
        predict = next(d for d in config["dependencies"] if d.get("api_name") == "predict_tumor")
        out = run_event(bob, predict["id"], payload(config, predict, 0, "file", upload(bob, _png(4))))
        heatmap = next(p for p in _paths(out["output"]["data"]) if str(srv.cache) in p)
        assert bob.get(f"/gradio_api/file={heatmap}").status_code == 200
        assert alice.get(f"/gradio_api/file={heatmap}").status_code == 404


def _paths(data: Any) -> Iterator[str]:
    if isinstance(data, dict):
        if isinstance(data.get("path"), str):
            yield data["path"]
        for v in data.values():
            yield from _paths(v)
    elif isinstance(data, list):
        for v in data:
            yield from _paths(v)


def test_cache_files_and_database_are_private_to_the_server_user(srv: Srv) -> None:
    with srv.client(srv.alice) as alice:
        path = Path(upload(alice, _png(5), "mode.png"))
    for p in (path, srv.data / "doctorai.db"):
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, f"{p} is {oct(p.stat().st_mode)}"
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0


def test_uploads_are_limited_in_count_rate_and_bytes(srv: Srv) -> None:
    carol = token_headers(srv.url, "carol", PASSWORD)
    with srv.client(carol) as c:
        many = [("files", (f"f{i}.png", _png(10 + i), "image/png")) for i in range(10)]
        r = c.post("/gradio_api/upload", files=many)
        assert r.status_code == 413
        assert "files per upload" in r.text
        # the refused files are not left behind
        assert not [p for p in srv.cache.rglob("f[0-9].png")]
        big = os.urandom(900 * 1024)  # the quota is 3 MB in this server
        codes = [
            c.post("/gradio_api/upload", files=[("files", (f"b{i}.png", big, "image/png"))]).status_code
            for i in range(4)
        ]
        assert codes == [200, 200, 200, 413], codes
        codes = [
            c.post("/gradio_api/upload", files=[("files", ("s.png", b"x", "image/png"))]).status_code for _ in range(12)
        ]
        assert 429 in codes, codes  # 12 uploads per minute in this server
        r = c.post("/gradio_api/upload", files=[("files", ("s.png", b"x", "image/png"))])
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1


def test_private_events_are_not_callable_by_name_and_unknown_events_are_404(srv: Srv) -> None:
    with srv.client(srv.alice) as alice:
        config = alice.get("/config").json()
        private = [d for d in config["dependencies"] if d.get("api_visibility") == "private" and d.get("api_name")]
        assert private
        for dep in private:
            data = [None] * len(dep["inputs"])
            r = alice.post(f"/gradio_api/call/{dep['api_name']}", json={"data": data})
            assert r.status_code == 404, f"{dep['api_name']} -> {r.status_code}"
        r = alice.post(
            "/gradio_api/queue/join",
            json={"data": [], "fn_index": 10_000, "session_hash": "abc", "event_data": None, "trigger_id": None},
        )
        assert r.status_code == 404, r.text
        assert alice.post("/gradio_api/call/no_such_event", json={"data": []}).status_code == 404
