"""What a script user sees: gradio_client's ``view_api()`` lists only the predict events and the
chat, every output has a name, and UI-only events are neither listed nor callable by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from settings import Settings
from tests.conftest import token_headers


def _blocks(settings: Settings) -> Any:
    from gradio.routes import App

    from app import create_app

    app = create_app(settings)
    mounted = [getattr(r, "app", None) for r in app.routes]
    return next(a for a in mounted if isinstance(a, App)).get_blocks()


def test_api_lists_only_the_predict_events_and_the_chat(settings: Settings, chat_registry_file: Path) -> None:
    blocks = _blocks(settings.model_copy(update={"registry_file": chat_registry_file}))
    info = blocks.get_api_info()
    named = set(info["named_endpoints"])
    image_ids = ["tumor", "xray", "pox", "nested", "legacy", "absent"]
    assert named == {f"/predict_{m}" for m in image_ids} | {"/chat"}
    assert not info["unnamed_endpoints"]
    for name, endpoint in info["named_endpoints"].items():
        labels = [r["label"] for r in endpoint["returns"]]
        assert all(label and not label.startswith("value_") for label in labels), (name, labels)
    predict = info["named_endpoints"]["/predict_tumor"]
    assert [r["label"] for r in predict["returns"]] == ["Class probabilities", "Grad-CAM overlay", "Summary"]


def test_private_events_cannot_be_called_by_name(live_server: str) -> None:
    from gradio_client import Client

    client = Client(live_server, headers=token_headers(live_server), verbose=False)
    api = client.view_api(print_info=False, return_format="dict")
    assert "/status" not in api["named_endpoints"]
    for name in ("/status", "/preview", "/compare", "/refresh"):
        with pytest.raises(ValueError, match="Cannot find a function"):
            client.predict(api_name=name)
