"""Headless Chromium for the browser tests: Debian's chromium driven by Playwright's API
(never `playwright install`). A browser that cannot start fails the test, never skips it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, async_playwright

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)


@contextlib.asynccontextmanager
async def chromium(*extra_args: str) -> AsyncIterator[Browser]:
    """One Chromium (per test: Playwright's async objects belong to the test's own loop)."""
    async with async_playwright() as p:
        try:
            browser = await p.chromium.launch(executable_path=CHROMIUM,
                                              args=[*CHROMIUM_ARGS, *extra_args])
        except Exception as exc:  # a missing browser is a failure, never a skip
            pytest.fail(f"Chromium did not start from {CHROMIUM} "
                        f"(apt-get install chromium): {exc}", pytrace=False)
        try:
            yield browser
        finally:
            await browser.close()
