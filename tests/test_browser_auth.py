"""A person's path through access control in a real browser: the app URL lands on the login page,
a wrong password is refused, the right one opens the UI with the user's name in the header; an
analysis shows up in the admin's audit tab; "Log out" ends the session for good (the app URL,
the Gradio API and the back button all lead back to the login page). A clinician never sees the
admin tab.

Drives Debian's Chromium with Playwright (no browser download). Screenshots go to the test's
temp dir; set DOCTORAI_SCREENSHOT_DIR to keep copies.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np

from tests.browser_utils import (
    BROWSER_MARKS,
    CHROMIUM,
    LAUNCH_ARGS,
    UI_TIMEOUT_MS,
    csp_violations,
    keep_screenshot,
    login,
    watch_console,
)
from tests.conftest import ADMIN_PASSWORD, image_bytes, token_headers

pytestmark = BROWSER_MARKS


def _path(url: str) -> str:
    return urlsplit(url).path


def test_login_analyse_audit_and_logout(live_server: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    img = np.zeros((100, 100, 3), np.uint8)
    img[25:75, 20:80] = (190, 170, 160)
    upload = tmp_path / "audit_slice.png"
    upload.write_bytes(image_bytes(img))
    shots = {
        name: tmp_path / f"auth_{name}.png" for name in ("login_page", "ui_signed_in", "admin_audit", "logged_out")
    }

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1100})
        page = context.new_page()
        console = watch_console(page)

        # the app URL sends an anonymous visitor to the login page
        page.goto(live_server, wait_until="load")
        assert _path(page.url) == "/login"
        expect(page.locator("#login-submit")).to_be_visible()
        expect(page.get_by_text("Research use, not a diagnosis.")).to_be_visible()
        page.screenshot(path=str(shots["login_page"]), full_page=True)

        # a wrong password: an error, still on the login page, no UI
        page.locator("#username").fill("admin")
        page.locator("#password").fill("not-the-password")
        page.locator("#login-submit").click()
        expect(page.get_by_role("alert")).to_be_visible(timeout=UI_TIMEOUT_MS)
        assert _path(page.url) == "/login"
        expect(page.locator("#user-bar")).to_have_count(0)

        # the right password: the UI, with the user's name in the header
        login(page, live_server, "admin", ADMIN_PASSWORD)
        assert _path(page.url) == "/"
        expect(page.locator("#user-bar")).to_contain_text("Signed in as admin (admin)")
        expect(page.locator("#logout-link")).to_be_visible()

        # analyse an image in the Tumor tab
        page.get_by_role("tab", name="Tumor").click()
        page.locator("#upload-tumor input[type=file]").set_input_files(str(upload))
        page.locator("#analyze-tumor").click()
        label = page.locator("#label-tumor")
        expect(label).to_contain_text("Glioma", timeout=UI_TIMEOUT_MS)
        expect(label).to_contain_text("%")
        expect(page.locator("#heatmap-tumor img")).to_be_visible(timeout=UI_TIMEOUT_MS)
        page.screenshot(path=str(shots["ui_signed_in"]), full_page=True)

        # the admin tab lists that analysis in the audit log
        admin_tab = page.get_by_role("tab", name="Admin")
        expect(admin_tab).to_be_visible()
        admin_tab.click()
        page.locator("#audit-search").click()
        table = page.locator("#audit-table")
        # by role: Gradio's dataframe also keeps a hidden copy of its rows for sizing
        row = table.get_by_role("row").filter(has_text="predict").filter(has_text="tumor").first
        expect(row).to_be_visible(timeout=UI_TIMEOUT_MS)
        headers = [h.strip() for h in table.get_by_role("columnheader").all_inner_texts()]
        cells = row.get_by_role("gridcell")
        audit = dict(zip(headers, (c.strip() for c in cells.all_inner_texts()), strict=True))
        assert audit["username"] == "admin", audit
        assert audit["action"] == "predict", audit
        assert audit["model_id"] == "tumor", audit
        assert audit["outcome"] == "ok", audit
        # the outcome is on screen without scrolling the wide table sideways
        expect(cells.nth(headers.index("outcome"))).to_be_in_viewport()
        page.screenshot(path=str(shots["admin_audit"]), full_page=True)
        revoked = context.cookies()  # the session cookie, to replay after logout

        # log out: the login page says so
        page.locator("#logout-link").click()
        page.wait_for_url("**/login?logged_out=true", timeout=UI_TIMEOUT_MS)
        expect(page.get_by_role("status")).to_have_text("You are logged out.")
        page.screenshot(path=str(shots["logged_out"]), full_page=True)

        # the back button brings no UI back: the UI page is not cached (no-store), so going back
        # to it asks the server, which sends the browser to the login page; so does a reload
        page.go_back(wait_until="load")
        assert _path(page.url) == "/login", page.url
        expect(page.locator("#login-submit")).to_be_visible()
        expect(page.locator("#analyze-tumor")).to_have_count(0)
        page.reload(wait_until="load")
        assert _path(page.url) == "/login", page.url

        # the app URL shows the login page again, not the UI
        page.goto(live_server, wait_until="load")
        assert _path(page.url) == "/login"
        expect(page.locator("#login-submit")).to_be_visible()
        expect(page.locator("#user-bar")).to_have_count(0)

        # the Gradio API refuses the page's cookies, and the old session cookie replayed too
        for replay in (False, True):
            if replay:
                context.add_cookies(revoked)  # type: ignore[arg-type]
            for api in ("/config", "/gradio_api/info"):
                r = page.request.get(live_server + api, max_redirects=0)
                assert r.status == 401, (api, replay, r.status, r.text()[:200])
        browser.close()

    assert not csp_violations(console), csp_violations(console)
    for shot in shots.values():
        assert shot.stat().st_size > 5_000
        keep_screenshot(shot)


def test_clinician_does_not_see_the_admin_tab(live_server: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    username = f"clin-{uuid.uuid4().hex[:8]}"
    password = "clinician-browser-pw"
    r = httpx.post(
        live_server + "/api/users",
        json={"username": username, "password": password, "role": "clinician"},
        headers=token_headers(live_server),
        timeout=30,
    )
    assert r.status_code == 201, r.text
    shot = tmp_path / "auth_clinician_ui.png"

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        console = watch_console(page)
        login(page, live_server, username, password)
        expect(page.locator("#user-bar")).to_contain_text(f"Signed in as {username} (clinician)")
        # the header (and with it the admin tab's visibility) is set by the same load event
        expect(page.get_by_role("tab", name="Tumor")).to_be_visible()
        expect(page.get_by_role("tab", name="Admin")).to_have_count(0)
        expect(page.locator("#audit-table")).to_have_count(0)
        # and the audit API says no, whatever the UI shows
        assert page.request.get(live_server + "/api/audit").status == 403
        page.screenshot(path=str(shot), full_page=True)
        browser.close()

    assert not csp_violations(console), csp_violations(console)
    keep_screenshot(shot)
