"""The REST API against the real app (FastAPI + mounted Gradio) with tiny models."""

from __future__ import annotations

import base64
import io
import zipfile
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import image_bytes, login


def post(client: Any, model: str, data: bytes, name: str = "x.png", **params: Any) -> Any:
    return client.post(f"/api/predict/{model}", files={"file": (name, data, "application/octet-stream")}, params=params)


def test_health_and_ready(client: Any) -> None:
    r = client.get("/api/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    r = client.get("/api/ready")
    assert r.status_code == 200
    models = r.json()["models"]
    assert models["tumor"] == {"state": "not_loaded", "version": "1.0.0"}
    assert models["absent"]["state"] == "not_installed"


def test_predict_contract_and_lazy_load(client: Any, png_bytes: bytes) -> None:
    r = post(client, "tumor", png_bytes)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {
        "model_id",
        "model_version",
        "label",
        "probabilities",
        "heatmap_png_base64",
        "timing_ms",
        "cached",
    }
    assert body["model_id"] == "tumor"
    assert body["model_version"] == "1.0.0"
    assert list(body["probabilities"]) == ["glioma", "meningioma", "notumor", "pituitary"]
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["heatmap_png_base64"] is None
    assert body["cached"] is False
    assert "not a diagnosis" in body["notice"]
    assert client.get("/api/ready").json()["models"]["tumor"]["state"] == "ready"


def test_explain_returns_a_png_heatmap_the_size_of_the_input(client: Any, png_bytes: bytes) -> None:
    r = post(client, "tumor", png_bytes, explain="true")
    assert r.status_code == 200
    png = base64.b64decode(r.json()["heatmap_png_base64"])
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG"
    assert img.size == (80, 64)
    # explain as a form field (the original clients sent form data) works too
    r2 = client.post("/api/predict/tumor", files={"file": ("x.png", png_bytes)}, data={"explain": "true"})
    assert r2.json()["heatmap_png_base64"]
    assert r2.json()["cached"] is True


def test_single_sigmoid_model_reports_both_classes(client: Any, png_bytes: bytes) -> None:
    body = post(client, "xray", png_bytes).json()
    p = body["probabilities"]
    assert list(p) == ["NORMAL", "PNEUMONIA"]
    assert p["NORMAL"] + p["PNEUMONIA"] == pytest.approx(1.0)
    assert body["label"] == ("PNEUMONIA" if p["PNEUMONIA"] >= 0.5 else "NORMAL")


def test_second_request_is_a_cache_hit(client: Any, png_bytes: bytes) -> None:
    a = post(client, "pox", png_bytes).json()
    b = post(client, "pox", png_bytes).json()
    assert (a["cached"], b["cached"]) == (False, True)
    assert a["probabilities"] == b["probabilities"]


def test_dicom_upload(client: Any) -> None:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    with open(path, "rb") as fh:
        r = post(client, "nested", fh.read(), name="ct.dcm", explain="true")
    assert r.status_code == 200, r.text
    assert r.json()["heatmap_png_base64"]


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "hello")
    return buf.getvalue()


def _bomb() -> bytes:
    # 4000 x 4000 = 16 MP of zeros compresses to a few KB; the test limit is 4 MP.
    buf = io.BytesIO()
    Image.new("L", (4000, 4000)).save(buf, format="PNG")
    return buf.getvalue()


def _no_pixel_dicom() -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.88.11")
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.PatientName = "Test^NoPixels"
    ds.Modality = "SR"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


BAD_INPUTS = {
    "empty": (b"", 400, "empty"),
    "text": (b"hello, I am not an image", 415, "PNG, JPEG"),
    "zip_renamed_png": (_zip(), 415, "PNG, JPEG"),
    "pdf_renamed_png": (b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", 415, "PNG, JPEG"),
    "svg_with_script": (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', 415, "PNG, JPEG"),
    "truncated_png": (image_bytes(np.full((64, 64, 3), 7, np.uint8))[:60], 422, ""),
    "truncated_jpeg": (
        image_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8), "JPEG")[:300],
        422,
        "",
    ),
    "decompression_bomb": (_bomb(), 413, "pixels"),
    "dicom_without_pixels": (_no_pixel_dicom(), 422, "pixel data"),
    "too_many_bytes": (b"\x89PNG\r\n\x1a\n" + b"\0" * (3 * 2**20), 413, "MB"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_gets_a_clear_4xx_and_the_service_stays_up(client: Any, case: str) -> None:
    data, status, words = BAD_INPUTS[case]
    r = post(client, "tumor", data, name="../../etc/passwd.png")
    assert r.status_code == status, (case, r.status_code, r.text)
    detail = r.json()["detail"]
    assert words.lower() in detail.lower()
    assert "Traceback" not in r.text
    assert client.get("/api/health").status_code == 200


def test_unknown_and_not_installed_models(client: Any, png_bytes: bytes) -> None:
    r = post(client, "nope", png_bytes)
    assert r.status_code == 404
    assert "known:" in r.json()["detail"]
    r = post(client, "absent", png_bytes)
    assert r.status_code == 503
    assert "put absent.keras in" in r.json()["detail"]


def test_missing_file_field(client: Any) -> None:
    r = client.post("/api/predict/tumor")
    assert r.status_code == 400
    assert "'file'" in r.json()["detail"]


def test_gradio_ui_is_served_with_stable_api_names(client: Any) -> None:
    assert client.get("/").status_code == 200
    cfg = client.get("/config").json()
    names = {d.get("api_name") for d in cfg["dependencies"]}
    assert {"predict_tumor", "predict_xray", "predict_pox", "predict_nested"} <= names


def test_repeated_explained_request_reuses_the_rendered_heatmap(client: Any, png_bytes: bytes) -> None:
    a = post(client, "tumor", png_bytes, explain="true").json()
    b = post(client, "tumor", png_bytes, explain="true").json()
    assert b["cached"] is True
    assert b["heatmap_png_base64"] == a["heatmap_png_base64"]
    assert "decode" not in b["timing_breakdown_ms"]  # neither decoded nor re-rendered
    c = post(client, "tumor", png_bytes, explain="true", opacity=0.9).json()
    assert c["cached"] is True
    assert c["heatmap_png_base64"] != a["heatmap_png_base64"]


def test_ready_is_503_while_preloading_then_200(settings: Any) -> None:
    import time

    from fastapi.testclient import TestClient

    from app import create_app

    settings.preload = ["tumor", "absent"]
    with TestClient(create_app(settings)) as c:
        c.headers.update(login(c))
        first = c.get("/api/ready")
        assert first.status_code == 503
        assert first.json()["models"]["tumor"]["state"] == "loading"
        assert c.get("/api/health").status_code == 200  # liveness never waits for models
        deadline = time.monotonic() + 120
        while c.get("/api/ready").status_code != 200:
            assert time.monotonic() < deadline, "preload did not finish"
            time.sleep(0.2)
        body = c.get("/api/ready").json()
        assert body["models"]["tumor"]["state"] == "ready"
        assert body["models"]["absent"]["state"] == "not_installed"


def test_gradio_queue_polls_at_the_configured_rate(settings: Any) -> None:
    """Gradio's idle queue polling (1 ms by default) is calmed to the setting, and the UI still
    serves events (the browser tests run them end to end)."""
    from gradio.routes import App

    from app import create_app

    app = create_app(settings.model_copy(update={"gradio_queue_poll_ms": 7.0}))
    mounted = [getattr(r, "app", None) for r in app.routes]
    gradio_apps = [a for a in mounted if isinstance(a, App)]
    assert gradio_apps, "the Gradio app is not mounted"
    queue = gradio_apps[0].get_blocks()._queue
    assert queue.sleep_when_free == pytest.approx(0.007)
    assert queue.progress_update_sleep_when_free >= 0.07
