"""Against a live server: gradio_client round trip and REST over real HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import image_bytes, token_headers


@pytest.fixture
def png_file(tmp_path: Path) -> Path:
    p = tmp_path / "scan.png"
    p.write_bytes(image_bytes(np.random.default_rng(5).integers(0, 255, (90, 70, 3), dtype=np.uint8)))
    return p


def test_gradio_client_round_trip(live_server: str, png_file: Path) -> None:
    from gradio_client import Client, handle_file

    client = Client(live_server, verbose=False, headers=token_headers(live_server))
    label, heatmap, info = client.predict(handle_file(str(png_file)), 0.5, True, api_name="/predict_tumor")
    confidences = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert set(confidences) == {"Glioma", "Meningioma", "Notumor", "Pituitary"}
    assert sum(confidences.values()) == pytest.approx(1.0, abs=1e-5)
    assert label["label"] == max(confidences, key=lambda k: confidences[k])
    assert Path(heatmap).suffix == ".png"
    from PIL import Image

    with Image.open(heatmap) as img:
        assert img.format == "PNG"
        assert img.size == (70, 90)
    assert "Research use only" in info
    assert "computed" in info
    # the same image again is served from the cache
    _, _, info2 = client.predict(handle_file(str(png_file)), 0.5, True, api_name="/predict_tumor")
    assert "hit (model not run)" in info2


def test_gradio_client_gets_the_typed_error_message(live_server: str, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all")
    client = Client(live_server, verbose=False, headers=token_headers(live_server))
    with pytest.raises(Exception, match="PNG, JPEG, BMP, TIFF, WebP or DICOM"):
        client.predict(handle_file(str(bad)), 0.5, True, api_name="/predict_tumor")


def test_rest_over_http(live_server: str, png_file: Path) -> None:
    r = httpx.post(
        f"{live_server}/api/predict/xray",
        files={"file": png_file.open("rb")},
        params={"explain": "true"},
        timeout=60,
        headers=token_headers(live_server),
    )
    assert r.status_code == 200
    assert r.json()["heatmap_png_base64"].startswith("iVBOR")  # base64 of the PNG signature
