"""A real headless Chromium (Debian's, driven by Playwright) for the Prefect UI tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Launch the system Chromium headless; fail (never skip) when it is not installed."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does) to run the UI tests"
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
