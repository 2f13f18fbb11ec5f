"""Debian's chromium, headless, driven by Selenium: the browser tests' one way to open a page."""

import shutil
from contextlib import contextmanager

import pytest

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
_skip = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (make test installs them)"
)
BROWSER = [pytest.mark.browser, _skip]  # a module's ``pytestmark``


def needs_chromium(test):
    """A browser test: marked ``browser`` (left out of ``make test-fast``), skipped without chromium."""
    return pytest.mark.browser(_skip(test))


@contextmanager
def chromium(size: str = "1100,700"):
    """A headless chromium driver that keeps the console log (quit on exit)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={size}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
