"""What the browser tests share: Debian's Chromium driven by Playwright, no browser download."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage, Page

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root in a closed network: no sandbox, and no background connections that would fail.
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (make browser-deps)"),
]


def keep_screenshot(path: Path) -> None:
    """Copy a screenshot to $DOCTORAI_SCREENSHOT_DIR, when set, so a person can look at it."""
    keep = os.environ.get("DOCTORAI_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)


UI_TIMEOUT_MS = 60_000  # the CPU is shared with training jobs: be generous


def login(page: Page, base_url: str, username: str, password: str) -> None:
    """Open ``base_url`` (which redirects to the login page), sign in with the form, and wait
    until the Gradio UI shows ``username`` in its header."""
    from playwright.sync_api import expect

    page.goto(base_url, wait_until="load")
    expect(page.locator("#login-submit")).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.locator("#username").fill(username)
    page.locator("#password").fill(password)
    page.locator("#login-submit").click()
    expect(page.locator("#user-name")).to_have_text(username, timeout=UI_TIMEOUT_MS)


def watch_console(page: Page) -> list[str]:
    """Collect the page's console errors (CSP violations among them) into the returned list."""
    errors: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            errors.append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    return errors


def csp_violations(errors: list[str]) -> list[str]:
    """The Content-Security-Policy violations among console errors."""
    return [e for e in errors if "Content Security Policy" in e or "Content-Security-Policy" in e]
