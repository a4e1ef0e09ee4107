"""The dashboard in a real browser (Debian's headless Chromium, driven by Selenium) against `widgetry run`: sign in,
create, edit and import through the page, and see each change arrive from the event stream without a reload."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.support import API_KEY, ROOT, Server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = ROOT / ".ci" / "artifacts"
WAIT_S = 20


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    options = Options()
    # Both paths given, so Selenium Manager has nothing to look up or download.
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,1260"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    return WebDriverWait(driver, WAIT_S).until(condition, f"waiting for {what}")


def row(driver: WebDriver, sku: str) -> WebElement | None:
    found = driver.find_elements(By.CSS_SELECTOR, f'#widgets tr[data-sku="{sku}"]')
    return found[0] if found else None


def cell(driver: WebDriver, sku: str, name: str) -> str | None:
    """A cell of a widget's row, or `None` while the row is not there."""
    if (tr := row(driver, sku)) is None:
        return None
    return tr.find_element(By.CSS_SELECTOR, f'[data-field="{name}"]').text


def fill(form: WebElement, **values: str) -> None:
    for name, value in values.items():
        element = form.find_element(By.NAME, name)
        element.clear()
        element.send_keys(value)


def command_statuses(driver: WebDriver) -> list[tuple[str, str, str]]:
    """The commands list, newest first: (what, status, detail)."""
    return [
        (
            item.find_element(By.CSS_SELECTOR, '[data-field="what"]').text,
            item.get_attribute("data-status") or "",
            item.find_element(By.CSS_SELECTOR, '[data-field="detail"]').text,
        )
        for item in driver.find_elements(By.CSS_SELECTOR, "#commands li.command")
    ]


def test_sign_in_create_edit_and_import_live_from_the_event_stream(
    server: Server, browser: WebDriver, tmp_path: Path
) -> None:
    browser.get(f"{server.url}/")
    sign_in = browser.find_element(By.CSS_SELECTOR, "form[action='/ui/sign-in']")
    fill(sign_in, key="not-a-key")
    sign_in.submit()
    error = wait_for(browser, lambda d: d.find_elements(By.ID, "sign-in-error"), "the sign-in error")[0]
    assert "not accepted" in error.text

    sign_in = browser.find_element(By.CSS_SELECTOR, "form[action='/ui/sign-in']")
    fill(sign_in, key=API_KEY)
    sign_in.submit()
    wait_for(browser, lambda d: d.find_element(By.ID, "stream-status").text == "live", "the event stream to open")
    # A reload would lose this: every change below must reach the page over the open stream.
    browser.execute_script("window.sameDocument = true")

    create = browser.find_element(By.ID, "create-form")
    fill(create, sku="DASH-2", name="   ", price_cents="5")
    create.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    problem = create.find_element(By.CSS_SELECTOR, ".problem")
    wait_for(browser, lambda d: problem.is_displayed(), "the refused create's problem")
    # The problem's detail, then each invalid field with its reason: not the raw JSON.
    assert problem.text.startswith("The request does not meet the rules of the API.\nname: "), problem.text
    assert row(browser, "DASH-2") is None

    fill(create, sku="DASH-1", name="Dashboard sprocket", price_cents="1999", internal_notes="from the browser")
    create.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(browser, lambda d: cell(d, "DASH-1", "name") == "Dashboard sprocket", "the created row")
    assert (cell(browser, "DASH-1", "price"), cell(browser, "DASH-1", "version")) == ("19.99", "1")
    assert not problem.is_displayed()
    wait_for(browser, lambda d: command_statuses(d)[0][:2] == ("create DASH-1", "succeeded"), "the create to succeed")

    row(browser, "DASH-1").find_element(By.CSS_SELECTOR, "[data-edit]").click()
    edit = browser.find_element(By.ID, "edit-form")
    wait_for(browser, lambda d: edit.is_displayed(), "the edit dialog")
    fill(edit, name="Renamed sprocket", price_cents="2499")
    edit.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(browser, lambda d: cell(d, "DASH-1", "version") == "2", "the edited row")
    assert (cell(browser, "DASH-1", "name"), cell(browser, "DASH-1", "price")) == ("Renamed sprocket", "24.99")
    wait_for(browser, lambda d: not edit.is_displayed(), "the dialog to close once the edit succeeded")

    fill(create, sku="DASH-1", name="Twice", price_cents="1")
    create.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(browser, lambda d: command_statuses(d)[0][:2] == ("create DASH-1", "failed"), "the second create to fail")
    assert "DASH-1" in command_statuses(browser)[0][2]

    csv = tmp_path / "widgets.csv"
    csv.write_text(
        "sku,name,price_cents,internal_notes\n"
        "IMP-1,Imported one,100,\n"
        "IMP-2,Imported two,not-a-price,\n"
        "IMP-3,Imported three,300,restock\n"
    )
    imports = browser.find_element(By.ID, "import-form")
    imports.find_element(By.NAME, "file").send_keys(str(csv))
    imports.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    progress = browser.find_element(By.ID, "import-progress")
    wait_for(browser, lambda d: progress.get_attribute("aria-valuenow") == "100", "the progress bar to reach 100%")
    wait_for(browser, lambda d: "3 rows" in d.find_element(By.ID, "import-result").text, "the import's result")
    result = browser.find_element(By.ID, "import-result").text
    assert "2 created" in result and "1 failed" in result, result
    assert "row 2 (IMP-2)" in result, result
    assert browser.find_element(By.ID, "import-progress-text").text == "Done: 100%"
    wait_for(browser, lambda d: cell(d, "IMP-3", "name") == "Imported three", "the imported rows")
    assert cell(browser, "IMP-1", "price") == "1.00"
    assert row(browser, "IMP-2") is None
    assert command_statuses(browser)[0][:2] == ("import", "succeeded")

    row(browser, "IMP-1").find_element(By.CSS_SELECTOR, "[data-edit]").click()
    edit.find_element(By.CSS_SELECTOR, "button.danger").click()
    wait_for(browser, lambda d: d.switch_to.alert, "the delete confirmation").accept()
    wait_for(browser, lambda d: row(d, "IMP-1") is None, "the deleted row to go")

    event_types = [item.get_attribute("data-type") for item in browser.find_elements(By.CSS_SELECTOR, "#events li")]
    assert {"widget.created", "widget.updated", "widget.deleted", "command.failed", "command.completed"} <= set(
        event_types
    )
    assert browser.execute_script("return window.sameDocument") is True

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
