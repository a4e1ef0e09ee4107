"""The dashboard in a real browser (Debian's headless Chromium, driven by Selenium) against `widgetry run`: sign in,
create, edit and import through the page, and see each change arrive from the event stream without a reload; a
failed command beside its form; a 10,000-row import on a page that keeps answering; long names on a phone and a
desktop screen; a stream refused and dropped, and the page recovering by itself; internal notes shown and edited on
an admin key's page, and nowhere on a write key's."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.support import ADMIN, ADMIN_KEY, API_KEY, AUTH, ROOT, WAIT, Server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = ROOT / ".ci" / "artifacts"
WAIT_S = 20
IMPORT_ROWS = 10_000
DASH = "\N{EN DASH}"
RESPONSIVE_S = 1.0
"""The longest the page may take to answer a click, or be busy at once, while it takes an import's events."""
NOTES = "notes-marker-5c21"
"""Written into widgets' internal notes, and looked for where the notes must not be."""
KEYS = {"write": API_KEY, "admin": ADMIN_KEY}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`widgetry run` on the embedded defaults, with a write key and an admin key to sign in with."""
    live = Server({"WIDGETRY_API_KEYS": API_KEY, "WIDGETRY_ADMIN_KEYS": ADMIN_KEY}, tmp_path_factory.mktemp("e2e"))
    yield live
    live.stop()


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


def sign_in(driver: WebDriver, server: Server, key: str = API_KEY) -> None:
    driver.get(f"{server.url}/")
    form = driver.find_element(By.CSS_SELECTOR, "form[action='/ui/sign-in']")
    fill(form, key=key)
    form.submit()
    wait_for(driver, lambda d: d.find_element(By.ID, "stream-status").text == "live", "the event stream to open")


def write(server: Server, method: str, path: str, **body: Any) -> httpx.Response:
    """A command sent through the API (not the page), waiting for its outcome."""
    response = httpx.request(method, f"{server.url}{path}", json=body or None, headers={**AUTH, **WAIT}, timeout=30)
    assert response.status_code == 200, response.text
    return response


def problem_of(form: WebElement) -> WebElement:
    return form.find_element(By.CSS_SELECTOR, ".problem")


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

    fill(create, sku="DASH-1", name="Dashboard sprocket", price_cents="1999")
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
    wait_for(browser, lambda d: problem.is_displayed(), "the failed create's problem beside the form")

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


def test_a_command_that_fails_once_applied_keeps_the_input_and_shows_why_beside_its_form(
    server: Server, browser: WebDriver
) -> None:
    write(server, "POST", "/widgets", sku="KEEP-1", name="Kept", price_cents=100)
    sign_in(browser, server, ADMIN_KEY)  # whose page has the notes field too

    create = browser.find_element(By.ID, "create-form")
    fill(create, sku="KEEP-1", name="A second one", price_cents="250", internal_notes="typed with care")
    create.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(browser, lambda d: "already exists" in problem_of(create).text, "the duplicate's problem beside the form")
    values = {
        name: create.find_element(By.NAME, name).get_attribute("value") for name in ("sku", "name", "price_cents")
    }
    assert values == {"sku": "KEEP-1", "name": "A second one", "price_cents": "250"}
    assert create.find_element(By.NAME, "internal_notes").get_attribute("value") == "typed with care"
    assert command_statuses(browser)[0][:2] == ("create KEEP-1", "failed")

    # Edited elsewhere while the dialog is open: the page's edit, made at version 1, is stale.
    wait_for(browser, lambda d: cell(d, "KEEP-1", "version") == "1", "the widget's row")
    row(browser, "KEEP-1").find_element(By.CSS_SELECTOR, "[data-edit]").click()
    edit = browser.find_element(By.ID, "edit-form")
    wait_for(browser, lambda d: edit.find_element(By.NAME, "internal_notes").is_enabled(), "the dialog's read")
    write(server, "PATCH", "/widgets/KEEP-1", price_cents=150)
    fill(edit, name="My stale rename")
    edit.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(browser, lambda d: problem_of(edit).is_displayed(), "the stale edit's problem in the dialog")
    assert "version" in problem_of(edit).text.lower(), problem_of(edit).text
    assert edit.is_displayed()
    assert edit.find_element(By.NAME, "name").get_attribute("value") == "My stale rename"
    wait_for(browser, lambda d: cell(d, "KEEP-1", "version") == "2", "the other edit to reach the list")
    assert cell(browser, "KEEP-1", "name") == "Kept"


def test_a_ten_thousand_row_import_moves_the_bar_while_the_page_answers_clicks(
    server: Server, browser: WebDriver, tmp_path: Path
) -> None:
    sign_in(browser, server)
    csv = tmp_path / "bulk.csv"
    csv.write_text(
        "sku,name,price_cents,internal_notes\n"
        + "".join(f"BULK-{n:05d},Bulk widget {n},{n},\n" for n in range(IMPORT_ROWS))
    )
    # Clicks on the list's heading, answered by a handler that notes how long each waited for the page (from the
    # input event's creation to its handler), and every task that held the page for long: a tab busy with events
    # answers late. Measured in the page, so the test's own round trips through the driver do not count.
    heading = browser.find_element(By.ID, "widgets-title")
    browser.execute_script(
        "window.answers = []; window.longTasks = [];"
        "arguments[0].addEventListener('click', (e) => window.answers.push(performance.now() - e.timeStamp));"
        "new PerformanceObserver((list) => { for (const t of list.getEntries()) window.longTasks.push(t.duration); })"
        ".observe({type: 'longtask'});",
        heading,
    )
    imports = browser.find_element(By.ID, "import-form")
    imports.find_element(By.NAME, "file").send_keys(str(csv))
    imports.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    progress = browser.find_element(By.ID, "import-progress")

    percents: list[int] = []
    clicks = 0
    deadline = time.monotonic() + 180
    while not percents or percents[-1] < 100:
        assert time.monotonic() < deadline, f"the import did not finish; the bar showed {percents}"
        heading.click()
        clicks += 1
        percent = int(progress.get_attribute("aria-valuenow") or 0)
        if not percents or percent != percents[-1]:
            percents.append(percent)
        time.sleep(0.1)  # a sample every tenth of a second, not a wait for an outcome

    answers_ms, long_tasks_ms = browser.execute_script("return [window.answers, window.longTasks]")
    assert len(answers_ms) == clicks
    assert clicks >= 10
    assert max(answers_ms) < RESPONSIVE_S * 1000, f"slowest click answered after {max(answers_ms):.0f} ms"
    assert max(long_tasks_ms, default=0) < RESPONSIVE_S * 1000, f"the page froze for {max(long_tasks_ms):.0f} ms"
    assert percents == sorted(percents), percents
    assert len([p for p in percents if 0 < p < 100]) >= 3, f"the bar jumped instead of moving: {percents}"
    wait_for(browser, lambda d: f"{IMPORT_ROWS:,} rows" in d.find_element(By.ID, "import-result").text, "the result")
    assert f"{IMPORT_ROWS:,} created" in browser.find_element(By.ID, "import-result").text

    # The list pages through all of them, and finds one.
    count = browser.find_element(By.ID, "widget-count")
    wait_for(
        browser, lambda d: count.text.startswith(f"1{DASH}100 of ") and "10," in count.text, "the first page's count"
    )
    assert len(browser.find_elements(By.CSS_SELECTOR, "#widgets tbody tr")) == 100
    browser.find_element(By.ID, "page-next").click()
    wait_for(browser, lambda d: count.text.startswith(f"101{DASH}200 of "), "the second page")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#widgets tbody tr")) == 100
    browser.find_element(By.ID, "widget-search").send_keys("bulk-09999")
    wait_for(browser, lambda d: count.text == "1 widget matching “bulk-09999”", "the search's result")
    assert cell(browser, "BULK-09999", "name") == "Bulk widget 9999"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#widgets tbody tr")) == 1


def emulate_width(driver: WebDriver, width: int) -> None:
    """The page at `width` CSS pixels; narrow widths as a phone sees them (its viewport meta applies)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 800},
    )


def inside_viewport(driver: WebDriver, element: WebElement) -> bool:
    return driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return r.width > 0 && r.left >= 0 && r.right <= document.documentElement.clientWidth;",
        element,
    )


def uncovered(driver: WebDriver, element: WebElement) -> bool:
    """Nothing (a sticky table header, say) lies over the element's middle once it is scrolled into view."""
    return driver.execute_script(
        "const e = arguments[0]; e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
        "return e.contains(document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2));",
        element,
    )


@pytest.fixture(scope="module")
def long_widget(server: Server) -> str:
    """A widget whose sku is first in sku order and as long as a sku gets, and whose name is 200 characters with no
    space to break at; its sku."""
    sku = "0LONG-" + "S" * 58
    write(server, "POST", "/widgets", sku=sku, name="N" * 200, price_cents=123456, internal_notes="W" * 300)
    return sku


@pytest.mark.parametrize("width", [420, 1440])
@pytest.mark.parametrize("scope", ["write", "admin"])
def test_a_two_hundred_character_name_fits_the_page_at_phone_and_desktop_widths(
    server: Server, browser: WebDriver, long_widget: str, width: int, scope: str
) -> None:
    sku = long_widget
    emulate_width(browser, width)
    sign_in(browser, server, KEYS[scope])
    assert browser.execute_script("return window.innerWidth") == width, "the page is wider than the screen"
    wait_for(browser, lambda d: row(d, sku) is not None, "the long widget's row")
    browser.execute_script("window.scrollTo(0, 0)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / f"dashboard-{'admin-' if scope == 'admin' else ''}{width}.png"))

    assert browser.execute_script(
        "const root = document.documentElement; return root.scrollWidth <= root.clientWidth"
    ), "the page scrolls sideways"
    assert inside_viewport(browser, browser.find_element(By.ID, "sign-out"))
    card = browser.find_element(By.CSS_SELECTOR, "section.widgets")
    assert browser.execute_script(
        "return arguments[0].querySelector('table').getBoundingClientRect().right"
        " <= arguments[0].getBoundingClientRect().right + 0.5",
        card,
    ), "the table is wider than its card"
    long_row = row(browser, sku)
    shown = ["price", "version"] if width >= 800 else ["price"]
    if scope == "admin" and width >= 800:
        shown.append("internal_notes")
    for name_of_cell in shown:
        assert inside_viewport(browser, long_row.find_element(By.CSS_SELECTOR, f'[data-field="{name_of_cell}"]'))
    assert inside_viewport(browser, long_row.find_element(By.CSS_SELECTOR, "[data-edit]"))
    for label in browser.find_elements(By.CSS_SELECTOR, "#create-form label"):
        assert uncovered(browser, label), f"something covers the form's {label.text!r} label"


@pytest.fixture
def stingy_server(tmp_path: Path) -> Iterator[Server]:
    """One event stream per client, and a subscriber closed as soon as five events wait for it."""
    live = Server(
        {
            "WIDGETRY_API_KEYS": API_KEY,
            "WIDGETRY_SSE_CONNECTIONS_PER_CLIENT": "1",
            "WIDGETRY_SUBSCRIBER_QUEUE_SIZE": "5",
        },
        tmp_path,
    )
    yield live
    live.stop()


def test_the_page_recovers_by_itself_when_its_stream_is_dropped_then_refused(
    stingy_server: Server, browser: WebDriver
) -> None:
    server = stingy_server
    sign_in(browser, server)
    status = browser.find_element(By.ID, "stream-status")
    notice = browser.find_element(By.ID, "stream-notice")
    assert not notice.is_displayed()

    # A burst of events overflows the page's subscriber: the server drops its stream.
    body = {"widgets": [{"sku": f"BURST-{n:02d}", "name": f"Burst {n}", "price_cents": n} for n in range(40)]}
    assert httpx.post(f"{server.url}/widgets/imports", json=body, headers=AUTH).status_code == 202
    wait_for(browser, lambda d: notice.is_displayed() and "dropped" in notice.text, "the notice of a dropped stream")

    # Before the page reconnects, another stream of the same session takes the only place: the page is refused.
    cookie = browser.get_cookie("widgetry_session")
    assert cookie is not None
    with httpx.Client(base_url=server.url, cookies={cookie["name"]: cookie["value"]}, timeout=30) as rival:
        with contextlib.ExitStack() as held:
            wait_for(browser, lambda d: take_the_stream(rival, held), "the session's only stream")
            wait_for(browser, lambda d: "Retrying in" in notice.text, "the notice of a refused stream")
            assert status.text == "offline"
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            assert browser.save_screenshot(str(ARTIFACTS / "dashboard-stream-refused.png"))
            # Missed while refused: the page must resume after its last event, not start from now.
            write(server, "POST", "/widgets", sku="GAP-1", name="Made while refused", price_cents=1)
            assert notice.is_displayed()
        # The rival stream is gone: the page's next retry gets the place.
        wait_for(browser, lambda d: status.text == "live" and not notice.is_displayed(), "the page to recover")

    def logged(d: WebDriver) -> set[str]:
        return {
            li.find_element(By.CSS_SELECTOR, '[data-field="sku"]').text
            for li in d.find_elements(By.CSS_SELECTOR, '#events li[data-type="widget.created"]')
        }

    wait_for(browser, lambda d: "GAP-1 v1" in logged(d), "the missed event, replayed")
    assert {f"BURST-{n:02d} v1" for n in range(40)} <= logged(browser)
    wait_for(browser, lambda d: cell(d, "GAP-1", "name") == "Made while refused", "the missed widget in the list")


def take_the_stream(client: httpx.Client, held: contextlib.ExitStack) -> bool:
    """Opens an event stream (kept open in `held`) if the client's place is free yet."""
    response = held.enter_context(client.stream("GET", "/ui/events"))
    if response.status_code == 200:
        return True
    response.close()
    return False


def fetched(driver: WebDriver) -> list[str]:
    """The paths of everything the page has fetched since it loaded."""
    return driver.execute_script(
        "return performance.getEntriesByType('resource').map((entry) => new URL(entry.name).pathname)"
    )


def read_in_page(driver: WebDriver, path: str) -> tuple[int, str]:
    """A read made by the page itself (with its session), as its status and body."""
    return tuple(
        driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {headers: {Accept: 'application/json'}})"
            ".then(async (r) => done([r.status, await r.text()]), (e) => done([0, String(e)]));",
            path,
        )
    )


def search(driver: WebDriver, text: str) -> None:
    """Lists the widgets that match (the module's server holds many, from other tests)."""
    box = driver.find_element(By.ID, "widget-search")
    box.clear()
    box.send_keys(text)
    wait_for(driver, lambda d: f"matching “{text}”" in d.find_element(By.ID, "widget-count").text, "the search")


def admin_read(server: Server, sku: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/admin/widgets/{sku}", headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_an_admin_keys_page_shows_internal_notes_and_edits_them(server: Server, browser: WebDriver) -> None:
    write(server, "POST", "/widgets", sku="NOTE-1", name="Noted", price_cents=100, internal_notes=NOTES)
    sign_in(browser, server, ADMIN_KEY)
    search(browser, "NOTE-1")
    wait_for(browser, lambda d: cell(d, "NOTE-1", "internal_notes") == NOTES, "the notes in the list")
    assert "admin" in browser.find_element(By.CSS_SELECTOR, ".session .key").text

    row(browser, "NOTE-1").find_element(By.CSS_SELECTOR, "[data-edit]").click()
    edit = browser.find_element(By.ID, "edit-form")
    notes = edit.find_element(By.NAME, "internal_notes")
    wait_for(browser, lambda d: notes.is_enabled() and notes.get_attribute("value") == NOTES, "the notes read afresh")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "dashboard-admin-edit.png"))
    fill(edit, internal_notes="restock in May")
    edit.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(browser, lambda d: not edit.is_displayed(), "the dialog to close once the edit succeeded")
    # Events carry no notes: the list shows the edit because the page reads the admin list again.
    wait_for(browser, lambda d: cell(d, "NOTE-1", "internal_notes") == "restock in May", "the edited notes")
    assert admin_read(server, "NOTE-1").items() >= {"internal_notes": "restock in May", "version": 2}.items()

    # Changed elsewhere, by a write key: the page follows; then emptied from the page.
    write(server, "PATCH", "/widgets/NOTE-1", internal_notes="supplier: Acme")
    wait_for(browser, lambda d: cell(d, "NOTE-1", "internal_notes") == "supplier: Acme", "the notes changed elsewhere")
    row(browser, "NOTE-1").find_element(By.CSS_SELECTOR, "[data-edit]").click()
    wait_for(browser, lambda d: notes.get_attribute("value") == "supplier: Acme", "the dialog's notes")
    notes.clear()
    edit.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(browser, lambda d: cell(d, "NOTE-1", "version") == "4", "the emptied notes' change")
    wait_for(browser, lambda d: cell(d, "NOTE-1", "internal_notes") == "", "the notes emptied in the list")
    assert admin_read(server, "NOTE-1")["internal_notes"] == ""
    assert "/ui/admin/widgets" in fetched(browser)


def test_a_write_keys_page_never_has_internal_notes(server: Server, browser: WebDriver) -> None:
    write(server, "POST", "/widgets", sku="HIDE-1", name="Hidden notes", price_cents=100, internal_notes=NOTES)
    sign_in(browser, server)
    search(browser, "HIDE-1")
    wait_for(browser, lambda d: cell(d, "HIDE-1", "version") == "1", "the widget's row")
    # A change of the notes alone reaches the page as an event, and the notes do not.
    write(server, "PATCH", "/widgets/HIDE-1", internal_notes=f"{NOTES} again")
    wait_for(browser, lambda d: cell(d, "HIDE-1", "version") == "2", "the change's event")
    row(browser, "HIDE-1").find_element(By.CSS_SELECTOR, "[data-edit]").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "edit-form").is_displayed(), "the edit dialog")

    assert "write" in browser.find_element(By.CSS_SELECTOR, ".session .key").text
    assert browser.find_elements(By.CSS_SELECTOR, '[name="internal_notes"], [data-field="internal_notes"]') == []
    assert "internal notes" not in browser.find_element(By.TAG_NAME, "body").text.lower()
    source = browser.page_source
    assert NOTES not in source and "internal_notes" not in source
    assert not [path for path in fetched(browser) if path.startswith("/ui/admin")]
    status, body = read_in_page(browser, "/ui/widgets?search=HIDE-1")
    assert status == 200 and "Hidden notes" in body
    assert NOTES not in body and "internal_notes" not in body
    status, body = read_in_page(browser, "/ui/admin/widgets")
    assert status == 403 and NOTES not in body
