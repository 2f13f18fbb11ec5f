"""The playground page in a real headless browser: Debian's chromium driven by Selenium."""

import pytest

from tests.browser import BROWSER, chromium, console_errors

selenium = pytest.importorskip("selenium")
pytestmark = BROWSER


def test_playground_streams_an_answer_without_console_errors(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium() as driver:
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
        errors = console_errors(driver)
    assert answer.strip() and not answer.startswith("error")
    assert "TTFT:" in stats and "ms" in stats and "tokens: " in stats
    assert not errors, errors
    assert shot.stat().st_size > 1000
