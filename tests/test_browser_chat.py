"""A person's path through the chat tab: ask, watch the answer arrive with its source links,
ask in Arabic (rendered right-to-left), then ask about an image just analysed.

Drives Debian's Chromium with Playwright (no browser download), against a live server whose
knowledge base is built from a small corpus on the first question. Screenshots go to the
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


def test_ask_a_question_and_see_the_answer_with_sources(chat_live_server: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    shot = tmp_path / "ui_chat_answer.png"
    img = np.zeros((96, 96, 3), np.uint8)
    img[20:70, 25:75] = (210, 190, 180)
    upload = tmp_path / "slice.png"
    upload.write_bytes(image_bytes(img))

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1300})
        console = watch_console(page)
        login(page, chat_live_server, "admin", ADMIN_PASSWORD)
        page.get_by_role("tab", name="Medical chat").click()
        expect(page.locator("#chat-notice")).to_contain_text("Not medical advice")
        expect(page.get_by_text("Knowledge base not installed")).to_have_count(0)  # a corpus is configured

        box = page.locator("#chat-input textarea")
        box.fill("What are the symptoms of glaucoma?")
        box.press("Enter")
        bot = page.locator("#chat-bot")
        expect(bot).to_contain_text("What are the symptoms of glaucoma?")
        expect(bot).to_contain_text("peripheral, or side, vision", timeout=90_000)  # first use builds the index
        link = bot.locator('a[href="https://example.org/glaucoma/symptoms"]')
        expect(link).to_be_visible()
        expect(box).to_have_value("")
        expect(page.locator("#chat-status")).to_contain_text("retrieval")
        page.screenshot(path=str(shot), full_page=True)

        # Arabic: answered plainly (English-only corpus, no generator), right-to-left
        box.fill("ما هي أعراض مرض الزرق؟")
        page.locator("#chat-send").click()
        rtl = bot.locator("[dir=rtl]").last
        expect(rtl).to_contain_text("الإنجليزية فقط", timeout=30_000)
        assert rtl.evaluate("el => getComputedStyle(el).direction") == "rtl"

        # clear, then ask about an image result from an image tab
        page.locator("#chat-clear").click()
        expect(bot).not_to_contain_text("glaucoma")
        expect(page.locator("#chat-ask-image")).to_be_hidden()
        page.get_by_role("tab", name="Tumor").click()
        page.locator("#upload-tumor input[type=file]").set_input_files(str(upload))
        page.locator("#analyze-tumor").click()
        expect(page.locator("#label-tumor")).to_contain_text("%", timeout=90_000)
        page.get_by_role("tab", name="Medical chat").click()
        ask = page.locator("#chat-ask-image")
        expect(ask).to_be_visible(timeout=30_000)
        expect(ask).to_contain_text("Ask about my image result")
        ask.click()
        expect(bot).to_contain_text("The Tumor model (v1.0.0) predicted", timeout=30_000)
        expect(bot.locator(".message").last).to_contain_text("About your image result", timeout=30_000)
        page.screenshot(path=str(tmp_path / "ui_chat_image_question.png"), full_page=True)
        browser.close()
    assert not csp_violations(console), csp_violations(console)  # the CSP lets the UI work
    assert shot.stat().st_size > 10_000
    keep_screenshot(shot)
    keep_screenshot(tmp_path / "ui_chat_image_question.png")
