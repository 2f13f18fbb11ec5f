"""The playground page in a real headless browser: Debian's chromium driven by Selenium."""

import shutil

import pytest

selenium = pytest.importorskip("selenium")
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (make test installs them)"
)


def test_playground_streams_an_answer_without_console_errors(server, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,700"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.get(server.url + "/")
        assert driver.title == "efflm playground"
        for knob, value in (("max_tokens", "24"), ("temperature", "1"), ("seed", "3")):  # greedy: only newlines
            driver.find_element(By.ID, knob).clear()
            driver.find_element(By.ID, knob).send_keys(value)
        driver.find_element(By.ID, "prompt").send_keys("Tell me a story.")
        driver.find_element(By.ID, "send").click()
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant"))
        wait.until(
            lambda d: (
                d.find_element(By.ID, "send").is_enabled() and "tokens: –" not in d.find_element(By.ID, "stats").text
            )
        )
        answer = driver.find_element(By.CSS_SELECTOR, ".msg.assistant").text
        stats = driver.find_element(By.ID, "stats").text
        shot = tmp_path / "playground.png"
        driver.save_screenshot(str(shot))
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    assert answer.strip() and not answer.startswith("error")
    assert "TTFT:" in stats and "ms" in stats and "tokens: " in stats
    assert not errors, errors
    assert shot.stat().st_size > 1000
