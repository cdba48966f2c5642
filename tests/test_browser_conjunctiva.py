"""A person screening for anaemia: the conjunctiva tab with the shipped model, in real Chromium.

Upload a segmented (RGBA) crop, see the class, the estimated haemoglobin with its interval, and
the feature-contributions chart; the tab never talks about Grad-CAM. Uses the registry's own
weights (``assets/models``), so it needs no ``../shared``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.browser_utils import BROWSER_MARKS, CHROMIUM, LAUNCH_ARGS, keep_screenshot, login
from tests.conftest import ADMIN_PASSWORD, run_app

pytestmark = BROWSER_MARKS

ROOT = Path(__file__).resolve().parent.parent


def _conjunctiva_crop() -> bytes:
    """A pink-red ellipse of 'tissue' (opaque) on a transparent background, as CP-AnemiC crops are."""
    h, w = 120, 260
    yy, xx = np.mgrid[:h, :w]
    inside = ((yy - h / 2) / (h / 2.2)) ** 2 + ((xx - w / 2) / (w / 2.2)) ** 2 <= 1.0
    rng = np.random.default_rng(3)
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 0] = np.clip(rng.normal(190, 12, (h, w)), 0, 255)
    rgba[..., 1] = np.clip(rng.normal(95, 10, (h, w)), 0, 255)
    rgba[..., 2] = np.clip(rng.normal(100, 10, (h, w)), 0, 255)
    rgba[..., 3] = np.where(inside, 255, 0)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_app(
        tmp_path_factory.mktemp("conj-live"),
        DOCTORAI_MODEL_DIR=str(ROOT / "assets" / "models"),
        DOCTORAI_REGISTRY_FILE=str(ROOT / "assets" / "models.yaml"),
        DOCTORAI_DEVICE="cpu",
        DOCTORAI_PRELOAD="none",
    ) as url:
        yield url


def test_conjunctiva_tab_shows_class_estimate_and_contributions(real_server: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    upload = tmp_path / "conjunctiva_crop.png"
    upload.write_bytes(_conjunctiva_crop())
    shot = tmp_path / "ui_conjunctiva.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        login(page, real_server, "admin", ADMIN_PASSWORD)
        page.get_by_role("tab", name="Anaemia screening: conjunctiva").click()
        panel = page.locator("#tab-conjunctiva_anemia")
        expect(panel).to_be_visible()
        assert "Grad-CAM" not in panel.inner_text()  # its explanation is the contributions chart
        page.locator("#upload-conjunctiva_anemia input[type=file]").set_input_files(str(upload))
        page.locator("#analyze-conjunctiva_anemia").click()
        label = page.locator("#label-conjunctiva_anemia")
        expect(label).to_contain_text("%", timeout=90_000)
        assert "naemic" in label.inner_text()  # "Anaemic" / "Not anaemic"
        info = page.locator("#info-conjunctiva_anemia")
        expect(info).to_contain_text("g/dL", timeout=30_000)
        expect(info).to_contain_text("interval")
        expect(info).to_contain_text("not a measurement")
        chart = page.locator("#heatmap-conjunctiva_anemia img")
        expect(chart).to_be_visible(timeout=30_000)
        assert chart.evaluate("el => el.naturalWidth") > 200  # a rendered chart, not a placeholder
        assert "Grad-CAM" not in panel.inner_text()
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
    keep_screenshot(shot)
