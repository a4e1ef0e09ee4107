"""The dashboard's Content-Security-Policy in a real browser: the page runs whole under it, and a script injected
into it does not run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.e2e.test_dashboard import CHROMEDRIVER, CHROMIUM, fill, wait_for
from tests.support import API_KEY, Server


@pytest.fixture
def logging_browser() -> Iterator[WebDriver]:
    """Headless Chromium that keeps its console, where it reports what the policy blocked."""
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_signed_in_page_runs_under_its_policy_and_an_injected_script_does_not(
    server: Server, logging_browser: WebDriver
) -> None:
    browser = logging_browser
    browser.get(f"{server.url}/")
    sign_in = browser.find_element(By.CSS_SELECTOR, "form[action='/ui/sign-in']")
    fill(sign_in, key=API_KEY)
    sign_in.submit()
    wait_for(browser, lambda d: d.find_element(By.ID, "stream-status").text == "live", "the event stream to open")
    wait_for(browser, lambda d: "widget" in d.find_element(By.ID, "widget-count").text, "the widget list to load")
    # What an injection would do: add an inline script and an inline handler to the page.
    browser.execute_script(
        """
        const script = document.createElement("script");
        script.textContent = "window.injected = 'script'";
        document.body.appendChild(script);
        const image = document.createElement("img");
        image.setAttribute("onerror", "window.injected = 'handler'");
        image.src = "/not-an-image";
        document.body.appendChild(image);
        """
    )
    wait_for(
        browser,
        lambda d: d.execute_script("return document.querySelector('img[onerror]').complete"),
        "the injected image to fail",
    )
    blocked = [
        entry["message"] for entry in browser.get_log("browser") if "Content Security Policy" in entry["message"]
    ]

    assert browser.execute_script("return window.injected === undefined") is True
    assert len(blocked) == 2, blocked  # the injected script and handler, and nothing of the page's own
    assert all("inline" in message for message in blocked), blocked
