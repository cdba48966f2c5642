"""A new user's first minutes in the browser: the chat tab shows the knowledge-base fetch the
app started by itself, a question asked meanwhile waits for it and then answers with sources.

The archive comes from a loopback server in MedQuAD's layout, answering after a delay (a slow
network) so the progress can be seen. Screenshots: DOCTORAI_SCREENSHOT_DIR keeps copies."""

from __future__ import annotations

from pathlib import Path

from tests.browser_utils import BROWSER_MARKS, CHROMIUM, LAUNCH_ARGS, keep_screenshot, login
from tests.conftest import ADMIN_PASSWORD, run_app
from tests.medquad_archive import medquad_zip, serve_archive

pytestmark = BROWSER_MARKS


def test_chat_shows_the_fetch_progress_then_answers(
    tmp_path: Path, tiny_model_dir: Path, chat_registry_file: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    with serve_archive(medquad_zip()) as github:
        github.delay_s = 20.0
        with (
            run_app(
                tmp_path / "data",
                DOCTORAI_MODEL_DIR=str(tiny_model_dir),
                DOCTORAI_REGISTRY_FILE=str(chat_registry_file),
                DOCTORAI_DEVICE="cpu",
                DOCTORAI_KB_AUTO_FETCH="true",
                DOCTORAI_KB_FETCH_URL=github.url,
            ) as url,
            sync_playwright() as pw,
        ):
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
            page = browser.new_page(viewport={"width": 1300, "height": 1200})
            login(page, url, "admin", ADMIN_PASSWORD)
            page.get_by_role("tab", name="Medical chat").click()
            panel = page.locator("#kb-fetch")
            expect(panel).to_contain_text("Fetching the knowledge base", timeout=30_000)
            expect(panel).to_contain_text("Downloading MedQuAD")
            expect(page.locator("#chat-attribution")).to_contain_text("Ben Abacha")
            expect(page.locator("#chat-attribution")).to_contain_text("CC BY 4.0")
            box = page.locator("#chat-input textarea")
            box.fill("What are the symptoms of glaucoma?")
            box.press("Enter")
            bot = page.locator("#chat-bot")
            expect(bot).to_contain_text("Waiting for the knowledge base", timeout=30_000)
            shot = tmp_path / "ui_chat_fetching.png"
            page.screenshot(path=str(shot), full_page=True)
            keep_screenshot(shot)
            expect(bot).to_contain_text("peripheral, or side, vision", timeout=180_000)
            expect(bot.locator('a[href="https://example.org/glaucoma/symptoms"]')).to_be_visible()
            expect(panel).to_have_count(0, timeout=10_000)  # the panel goes once the fetch is done
            shot = tmp_path / "ui_chat_after_fetch.png"
            page.screenshot(path=str(shot), full_page=True)
            keep_screenshot(shot)
            browser.close()
    assert github.requests == ["/abachaa/MedQuAD/archive/test.zip"]
