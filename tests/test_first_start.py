"""The first minutes of a fresh install: the chat corpus fetched by the app itself, models
warm by default, the Spaces platform's variables, a one-line message when offline.

The "network" is a real HTTP server on 127.0.0.1 serving an archive in MedQuAD's layout."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from settings import Settings
from tests.conftest import ADMIN_PASSWORD, free_port, image_bytes, login, run_app, token_headers
from tests.medquad_archive import EXPECTED_KEPT, medquad_zip, serve_archive


def _wait_ready(url: str, headers: dict[str, str], timeout_s: float = 240) -> dict[str, Any]:
    """/api/ready once the image models are loaded and the knowledge-base fetch has ended."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = httpx.get(url + "/api/ready", headers=headers, timeout=10)
        body = r.json()
        kb = body.get("knowledge_base", {}).get("phase")
        if r.status_code == 200 and kb in (None, "done", "failed"):
            return body
        assert time.monotonic() < deadline, f"not ready after {timeout_s} s: {body}"
        time.sleep(0.5)


def test_defaults_preload_everything_and_fetch_in_development(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DOCTORAI_PRELOAD", "DOCTORAI_KB_AUTO_FETCH"):
        monkeypatch.delenv(name, raising=False)
    s = Settings(_env_file=None)
    assert s.preload == ["all"]
    assert s.resolved_kb_auto_fetch is True
    prod = Settings(_env_file=None, env="production", secret_key="k" * 40)
    assert prod.resolved_kb_auto_fetch is False  # production fetches only when asked to
    monkeypatch.setenv("DOCTORAI_PRELOAD", "none")
    assert Settings(_env_file=None).preload == []


def test_preload_all_loads_installed_image_models_and_a_request_waits_for_its_load(settings: Settings) -> None:
    from fastapi.testclient import TestClient

    from app import create_app

    settings.preload = ["all"]
    app = create_app(settings)
    runtime = app.state.runtime
    assert runtime.preload_ids == ["tumor", "xray", "pox", "nested", "legacy"]  # "absent" has no weights
    png = image_bytes(np.full((40, 40, 3), 90, np.uint8))
    with TestClient(app) as c:
        c.headers.update(login(c))
        first = c.get("/api/ready").json()
        assert first["status"] == "loading"
        assert first["preload"]["models"] == runtime.preload_ids
        # Requests that arrive while the preload runs wait for that load rather than start another.
        results: list[int] = []

        def ask() -> None:
            results.append(c.post("/api/predict/legacy", files={"file": ("a.png", png, "image/png")}).status_code)

        threads = [threading.Thread(target=ask) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert results == [200, 200, 200]
        deadline = time.monotonic() + 120
        while c.get("/api/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        for model_id in runtime.preload_ids:
            assert runtime.manager.load_count(model_id) == 1, model_id
        # After ready, the first analysis of a model does not load it.
        body = c.post("/api/predict/tumor", files={"file": ("b.png", png, "image/png")}).json()
        assert "model_load" not in body["timing_breakdown_ms"]


def test_offline_first_start_names_the_one_command(settings: Settings, chat_registry_file: Path) -> None:
    from fastapi.testclient import TestClient

    from app import create_app

    port = free_port()  # nothing listens: a refused connection, as with no network
    s = settings.model_copy(
        update={
            "registry_file": chat_registry_file,
            "kb_auto_fetch": True,
            "kb_fetch_url": f"http://127.0.0.1:{port}/medquad.zip",
        }
    )
    with TestClient(create_app(s)) as c:
        c.headers.update(login(c))
        deadline = time.monotonic() + 60
        while (kb := c.get("/api/ready").json()["knowledge_base"])["phase"] != "failed":
            assert time.monotonic() < deadline, kb
            time.sleep(0.2)
        assert "python -m inference.kb fetch medquad" in kb["message"]
        assert "DOCTORAI_KB_SOURCE" in kb["message"]
        r = c.post("/api/chat", json={"message": "What are the symptoms of glaucoma?"})
        assert r.status_code == 503
        assert "python -m inference.kb fetch medquad" in r.json()["detail"]


def test_clean_start_fetches_medquad_and_the_first_question_answers(
    tmp_path: Path, tiny_model_dir: Path, chat_registry_file: Path
) -> None:
    """``python app.py`` with nothing but the defaults (fetch on, preload all) and the archive on a
    loopback "GitHub": one question answers with MedQuAD sources, no other command run."""
    with (
        serve_archive(medquad_zip()) as github,
        run_app(
            tmp_path / "data",
            DOCTORAI_MODEL_DIR=str(tiny_model_dir),
            DOCTORAI_REGISTRY_FILE=str(chat_registry_file),
            DOCTORAI_DEVICE="cpu",
            DOCTORAI_KB_AUTO_FETCH="true",  # the development default (the suite turns it off)
            DOCTORAI_PRELOAD="all",  # the default (likewise)
            DOCTORAI_KB_FETCH_URL=github.url,
        ) as url,
    ):
        headers = token_headers(url, "admin", ADMIN_PASSWORD)
        ready = _wait_ready(url, headers)
        assert ready["knowledge_base"]["phase"] == "done", ready["knowledge_base"]
        assert f"{EXPECTED_KEPT:,} answered QA pairs kept" in ready["knowledge_base"]["message"]
        assert ready["models"]["chat"]["state"] == "ready"  # loaded after the fetch, before any question
        assert ready["models"]["tumor"]["state"] == "ready"
        assert github.requests == ["/abachaa/MedQuAD/archive/test.zip"]
        r = httpx.post(url + "/api/chat", headers=headers, json={"message": "What are the symptoms of glaucoma?"})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["matched"] is True
        assert answer["sources"][0]["url"] == "https://example.org/glaucoma/symptoms"
    assert (tmp_path / "data" / "corpora" / "medquad.jsonl.gz").exists()


def _own_address() -> str | None:
    """A non-loopback IPv4 address of this machine (a UDP connect sends nothing), or None."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.254", 9))  # TEST-NET-1: only picks the outgoing interface
            addr = str(s.getsockname()[0])
        except OSError:
            return None
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


def test_python_app_py_on_spaces_listens_where_the_platform_proxy_reaches_it(
    tmp_path: Path, tiny_model_dir: Path, tiny_registry_file: Path
) -> None:
    """Spaces runs ``python app.py`` with only its own variables (no ``env:`` block is applied):
    the app must listen on GRADIO_SERVER_NAME/PORT, reachable on a non-loopback address."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO, wait_until_up

    addr = _own_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to reach the server on")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCTORAI_HOST", "DOCTORAI_PORT"))}
    env.update(
        SPACE_ID="someone/doctorai",
        SPACE_HOST="someone-doctorai.hf.space",
        GRADIO_SERVER_NAME="0.0.0.0",
        GRADIO_SERVER_PORT=str(port),
        DOCTORAI_DATA_DIR=str(tmp_path / "data"),
        DOCTORAI_MODEL_DIR=str(tiny_model_dir),
        DOCTORAI_REGISTRY_FILE=str(tiny_registry_file),
        DOCTORAI_ADMIN_PASSWORD=ADMIN_PASSWORD,
        DOCTORAI_BCRYPT_ROUNDS="4",
    )
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_up(f"http://{addr}:{port}/api/health", proc, log_path, 120, "the Spaces-style app")
            assert httpx.get(f"http://{addr}:{port}/api/health", timeout=10).json()["status"] == "ok"
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_spaces_variables_count_only_when_doctorai_ones_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DOCTORAI_HOST", "DOCTORAI_PORT", "SPACE_ID", "DOCTORAI_SPACE_ID", "GRADIO_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    assert Settings(_env_file=None).host == "127.0.0.1"  # a developer's machine: loopback only
    monkeypatch.setenv("SPACE_ID", "someone/doctorai")
    assert Settings(_env_file=None).host == "0.0.0.0"
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7861")
    assert Settings(_env_file=None).port == 7861
    monkeypatch.setenv("DOCTORAI_HOST", "127.0.0.1")
    monkeypatch.setenv("DOCTORAI_PORT", "9000")
    s = Settings(_env_file=None)
    assert (s.host, s.port) == ("127.0.0.1", 9000)  # an explicit DOCTORAI_* setting wins


def test_log_format_follows_the_terminal_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import os
    import pty

    monkeypatch.delenv("DOCTORAI_LOG_FORMAT", raising=False)
    s = Settings(_env_file=None)
    assert s.resolved_log_format(io.StringIO()) == "json"  # a pipe or file: containers, CI
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w") as tty:
            assert s.resolved_log_format(tty) == "text"  # a developer's terminal
            monkeypatch.setenv("DOCTORAI_LOG_FORMAT", "json")
            assert Settings(_env_file=None).resolved_log_format(tty) == "json"
    finally:
        os.close(leader)


def test_batching_default_follows_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from inference import runtime

    monkeypatch.delenv("DOCTORAI_BATCHING", raising=False)
    assert Settings(_env_file=None).batching is None
    assert runtime.resolve_batching(Settings(_env_file=None, device="cpu")) is False
    assert runtime.resolve_batching(Settings(_env_file=None, device="gpu")) is True
    monkeypatch.setattr(runtime, "gpu_present", lambda: True)
    assert runtime.resolve_batching(Settings(_env_file=None, device="auto")) is True
    monkeypatch.setattr(runtime, "gpu_present", lambda: False)
    assert runtime.resolve_batching(Settings(_env_file=None, device="auto")) is False
    monkeypatch.setenv("DOCTORAI_BATCHING", "true")  # an explicit setting wins on any device
    assert runtime.resolve_batching(Settings(_env_file=None, device="cpu")) is True
