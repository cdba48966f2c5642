"""A person's path through the UI: open, pick a tab, upload, analyse, see the heatmap.

Drives Debian's Chromium with Playwright (no browser download). Screenshots go to the
test's temp dir; set DOCTORAI_SCREENSHOT_DIR to keep copies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.browser_utils import (
    BROWSER_MARKS,
    CHROMIUM,
    LAUNCH_ARGS,
    csp_violations,
    keep_screenshot,
    login,
    watch_console,
)
from tests.conftest import ADMIN_PASSWORD, image_bytes

pytestmark = BROWSER_MARKS


def test_upload_and_see_probabilities_and_heatmap(live_server: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    img = np.zeros((120, 120, 3), np.uint8)
    img[30:90, 30:90] = (200, 180, 170)
    upload = tmp_path / "brain_slice.png"
    upload.write_bytes(image_bytes(img))
    shot = tmp_path / "ui_after_analysis.png"

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        console = watch_console(page)
        login(page, live_server, "admin", ADMIN_PASSWORD)
        expect(page.get_by_text("Research use only, not a diagnosis.").first).to_be_visible()
        page.get_by_role("tab", name="Tumor").click()
        page.locator("#upload-tumor input[type=file]").set_input_files(str(upload))
        # the decoded image shows as soon as the file is chosen, before any analysis
        preview = page.locator("#preview-tumor img")
        expect(preview).to_be_visible(timeout=30_000)
        assert preview.evaluate("el => el.naturalWidth") == 120
        expect(page.locator("#preview-note-tumor")).to_contain_text("PNG, 120 x 120 px")
        expect(page.locator("#label-tumor")).not_to_contain_text("%")
        page.screenshot(path=str(tmp_path / "ui_preview_before_analysis.png"), full_page=True)
        keep_screenshot(tmp_path / "ui_preview_before_analysis.png")
        page.locator("#analyze-tumor").click()
        label = page.locator("#label-tumor")
        expect(label).to_contain_text("Glioma", timeout=60_000)
        expect(label).to_contain_text("%")
        heat = page.locator("#heatmap-tumor img")
        expect(heat).to_be_visible(timeout=30_000)
        expect(page.locator("#info-tumor")).to_contain_text("Research use only")
        # the heatmap really is an image that rendered (non-zero natural size)
        width = heat.evaluate("el => el.naturalWidth")
        assert width == 120
        # original and overlay in the slider, and both as full-resolution PNG downloads
        pair = page.locator("#compare-tumor img")
        expect(pair).to_have_count(2, timeout=30_000)
        assert pair.evaluate_all("els => els.map(e => e.naturalWidth)") == [120, 120]
        downloads = page.locator("#downloads-tumor")
        expect(downloads).to_contain_text("tumor-original", timeout=30_000)
        expect(downloads).to_contain_text("tumor-overlay")
        page.locator("#compare-tumor").scroll_into_view_if_needed()
        page.screenshot(path=str(shot), full_page=True)
        # a model without weights explains itself instead of failing
        page.get_by_role("tab", name="Absent").click()
        expect(page.get_by_text("Model not installed").first).to_be_visible()
        expect(page.get_by_text("put absent.keras in").first).to_be_visible()
        browser.close()
    assert not csp_violations(console), csp_violations(console)  # the CSP lets the UI work
    assert shot.stat().st_size > 10_000
    keep_screenshot(shot)
