"""The dashboard's sign-in: an API key once, then a session cookie that the write handlers registered under `/ui`
accept with the session's token in a header, while the API's own routes still take API keys only. A session has its
key's scopes: the admin reads under `/ui/admin` answer only a session whose key has `admin`. A session is stored at
sign-in only, ends after its lifetime however busy it is, and its pages tell the browser to run only their own
scripts."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar

from tests.support import ADMIN_KEY, API_KEY, AUTH, WAIT, eventually, serve
from tests.unit.state import CommandRecord, count, queued_jobs
from tests.unit.test_bad_input import assert_problem
from tests.unit.test_keys import issue, revoke
from widgetry.app import create_app
from widgetry.dashboard.sessions import CSRF_HEADER, SESSION_COOKIE
from widgetry.settings import Settings

WIDGET = {"sku": "UI-1", "name": "From the page", "price_cents": 1999}
NOTES = "dashboard-notes-marker-7f3a"
MADE_UP_SESSION_IDS = ["0" * 64, "f" * 60_000, "null", "not-an-id"]


async def signed_in(client: httpx.AsyncClient, key: str = API_KEY) -> dict[str, str]:
    """Signs the client's cookie jar in; the headers a page write sends (its CSRF token)."""
    response = await client.post("/ui/sign-in", data={"key": key})
    assert (response.status_code, response.headers["location"]) == (303, "/")
    page = await client.get("/")
    token = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert token is not None, page.text
    return {CSRF_HEADER: token[1]}


async def stored_sessions(app: Litestar) -> list[bytes]:
    settings: Settings = app.state.settings
    return await app.state.connections.redis.keys(f"{settings.redis_prefix}:sessions:*")


def writes(sku: str = "UI-1") -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("POST", "/ui/widgets", {"json": WIDGET}),
        ("PATCH", f"/ui/widgets/{sku}", {"json": {"price_cents": 1}}),
        ("DELETE", f"/ui/widgets/{sku}", {}),
        ("POST", "/ui/widgets/imports", {"json": {"widgets": [WIDGET]}}),
    ]


async def test_signing_in_with_a_bad_key_fails_with_a_readable_message_and_no_session(
    client: httpx.AsyncClient,
) -> None:
    refused = await client.post("/ui/sign-in", data={"key": "not-a-key"})
    empty = await client.post("/ui/sign-in", data={"key": "  "})
    after = await client.get("/ui/widgets")

    assert refused.status_code == 401
    assert refused.headers["content-type"].startswith("text/html")
    assert "That API key is not accepted" in refused.text
    assert (empty.status_code, "Enter an API key." in empty.text) == (401, True)
    assert_problem(after, 401)


async def test_the_page_asks_for_a_key_until_signed_in_then_shows_the_dashboard(client: httpx.AsyncClient) -> None:
    before = await client.get("/")
    await signed_in(client)
    after = await client.get("/")

    assert before.status_code == 200 and 'action="/ui/sign-in"' in before.text and "csrf-token" not in before.text
    assert after.status_code == 200 and 'id="widgets"' in after.text and API_KEY not in after.text


async def test_the_session_cookie_is_http_only_strict_and_holds_no_key(client: httpx.AsyncClient) -> None:
    visit = await client.get("/")
    response = await client.post("/ui/sign-in", data={"key": API_KEY})
    cookie = response.headers["set-cookie"]

    assert "set-cookie" not in visit.headers  # no session until someone signs in
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie  # WIDGETRY_SESSION_COOKIE_SECURE is off by default
    assert API_KEY not in cookie


async def test_signing_in_moves_the_session_to_a_new_id(client: httpx.AsyncClient) -> None:
    planted = {"Cookie": f"{SESSION_COOKIE}={'a' * 64}"}  # an id set in the browser before it signs in
    response = await client.post("/ui/sign-in", data={"key": API_KEY}, headers=planted)
    issued = {"Cookie": f"{SESSION_COOKIE}={response.cookies[SESSION_COOKIE]}"}
    with_planted_id = await client.get("/ui/widgets", headers=planted)
    with_issued_id = await client.get("/ui/widgets", headers=issued)

    assert response.status_code == 303 and issued != planted
    assert_problem(with_planted_id, 401)
    assert with_issued_id.status_code == 200


async def test_the_secure_flag_is_set_when_configured(embedded_settings: Settings) -> None:
    app = create_app(msgspec.structs.replace(embedded_settings, session_cookie_secure=True))
    async with serve(app) as client:
        response = await client.post("/ui/sign-in", data={"key": API_KEY})

    assert "Secure" in response.headers["set-cookie"]


async def test_dashboard_writes_without_a_session_are_401_and_record_nothing(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    responses = [await client.request(method, url, **body) for method, url, body in writes()]

    for response in responses:
        problem = assert_problem(response, 401)
        assert "Sign in" in problem["detail"]
    assert await count(app, CommandRecord) == 0


async def test_a_session_write_without_the_csrf_token_is_refused_with_403(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    await signed_in(client)

    missing = [await client.request(method, url, **body) for method, url, body in writes()]
    wrong = await client.post("/ui/widgets", json=WIDGET, headers={CSRF_HEADER: "guessed"})

    for response in [*missing, wrong]:
        problem = assert_problem(response, 403)
        assert CSRF_HEADER in problem["detail"]
    assert await count(app, CommandRecord) == 0
    assert await queued_jobs(app) == 0


async def test_a_session_write_with_its_csrf_token_is_accepted_and_applied(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    token = await signed_in(client)

    created = await client.post("/ui/widgets", json=WIDGET, headers=token)
    location = created.headers["location"]

    async def applied() -> bool:
        return (await client.get(f"/ui{location}")).json()["status"] == "succeeded"

    await eventually(applied, 10, "the command sent from the page to be applied")
    widget = (await client.get("/widgets/UI-1")).json()

    assert created.status_code == 202
    assert created.json()["type"] == "create_widget"
    assert (widget["name"], widget["price_cents"], widget["version"]) == ("From the page", 1999, 1)


async def test_the_dashboard_takes_the_apis_rules_for_bad_input(client: httpx.AsyncClient, app: Litestar) -> None:
    token = await signed_in(client)

    response = await client.post("/ui/widgets", json=WIDGET | {"price_cents": "12"}, headers=token)

    problem = assert_problem(response, 422)
    assert [param["name"] for param in problem["invalid_params"]] == ["price_cents"]
    assert await count(app, CommandRecord) == 0


async def test_the_apis_own_writes_still_need_an_api_key_and_ignore_the_session(client: httpx.AsyncClient) -> None:
    token = await signed_in(client)

    with_cookie = await client.post("/widgets", json=WIDGET, headers=token)
    with_key = await client.post("/widgets", json=WIDGET, headers=AUTH)

    assert_problem(with_cookie, 401)
    assert with_key.status_code == 202


async def test_the_dashboard_reads_need_a_session_even_where_the_apis_are_public(client: httpx.AsyncClient) -> None:
    public = await client.get("/widgets")
    page_read = await client.get("/ui/widgets")
    await signed_in(client)
    signed = await client.get("/ui/widgets")

    assert public.status_code == 200
    assert_problem(page_read, 401)
    assert signed.status_code == 200 and signed.json()["total"] == 0


async def test_signing_out_ends_the_session(client: httpx.AsyncClient) -> None:
    token = await signed_in(client)

    without_token = await client.post("/ui/sign-out")
    signed_out = await client.post("/ui/sign-out", headers=token)
    write = await client.post("/ui/widgets", json=WIDGET, headers=token)

    assert_problem(without_token, 403)
    assert (signed_out.status_code, signed_out.headers["hx-redirect"]) == (200, "/")
    assert_problem(write, 401)


async def test_a_sign_in_posted_from_another_site_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/ui/sign-in", data={"key": API_KEY}, headers={"Sec-Fetch-Site": "cross-site"})

    after = await client.get("/ui/widgets")

    assert_problem(response, 403)
    assert_problem(after, 401)


@pytest.fixture
async def keyed_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Litestar:
    monkeypatch.chdir(tmp_path)
    return create_app(Settings(api_keys=(API_KEY,), api_key_cache_seconds=0.2))


@pytest.fixture
async def keyed_client(keyed_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(keyed_app) as http:
        yield http


async def test_revoking_the_key_a_session_signed_in_with_ends_the_session(
    keyed_client: httpx.AsyncClient, keyed_app: Litestar
) -> None:
    key = await issue(keyed_app, "browser")
    token = await signed_in(keyed_client, key)
    before = await keyed_client.post("/ui/widgets", json=WIDGET, headers=token)
    await revoke(keyed_app, "browser")

    async def refused() -> bool:
        return (await keyed_client.get("/ui/widgets")).status_code == 401

    await eventually(refused, 5, "the revoked key's session to be refused")
    write = await keyed_client.post("/ui/widgets", json=WIDGET | {"sku": "UI-2"}, headers=token)
    page = await keyed_client.get("/")

    assert before.status_code == 202
    assert_problem(write, 401)
    assert 'action="/ui/sign-in"' in page.text


async def test_the_dashboards_routes_stay_out_of_the_api_docs(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]

    assert "/widgets" in paths
    assert not [path for path in paths if path == "/" or path.startswith("/ui")]


async def test_the_page_reads_with_its_session_where_the_api_puts_reads_behind_keys(
    embedded_settings: Settings,
) -> None:
    app = create_app(msgspec.structs.replace(embedded_settings, protect_reads=True))
    async with serve(app) as client:
        token = await signed_in(client)
        created = await client.post("/ui/widgets", json=WIDGET, headers=token)
        command = await client.get(f"/ui{created.headers['location']}")
        page_read = await client.get("/ui/widgets")
        api_read = await client.get("/widgets")

    assert created.status_code == 202
    assert command.status_code == 200 and command.json()["id"] == created.json()["id"]
    assert page_read.status_code == 200
    assert_problem(api_read, 401)


@pytest.mark.parametrize("made_up", MADE_UP_SESSION_IDS, ids=["id-shaped", "60KB", "null", "word"])
async def test_a_session_cookie_the_server_did_not_make_is_dropped_never_stored_or_echoed(
    client: httpx.AsyncClient, app: Litestar, made_up: str
) -> None:
    cookie = {"Cookie": f"{SESSION_COOKIE}={made_up}"}

    page = await client.get("/", headers=cookie)
    read = await client.get("/ui/widgets", headers=cookie)
    stream = await client.get("/ui/events", headers=cookie)
    sign_out = await client.post("/ui/sign-out", headers=cookie)

    assert page.status_code == 200 and 'action="/ui/sign-in"' in page.text
    assert_problem(read, 401)
    assert_problem(stream, 401)
    assert sign_out.status_code == 200
    assert [r for r in (page, read, stream, sign_out) if "set-cookie" in r.headers] == []
    assert await stored_sessions(app) == []


async def test_a_session_is_stored_at_sign_in_and_deleted_at_sign_out(client: httpx.AsyncClient, app: Litestar) -> None:
    token = await signed_in(client)
    stored = await stored_sessions(app)
    read = await client.get("/ui/widgets")
    signed_out = await client.post("/ui/sign-out", headers=token)

    assert len(stored) == 1
    assert read.status_code == 200 and "set-cookie" not in read.headers  # a request neither rewrites nor renews it
    cleared = signed_out.headers["set-cookie"]
    assert cleared.startswith(f"{SESSION_COOKIE}=") and "Max-Age=0" in cleared
    assert await stored_sessions(app) == []


async def test_a_sign_in_ends_after_its_lifetime_however_busy_the_session(embedded_settings: Settings) -> None:
    app = create_app(msgspec.structs.replace(embedded_settings, session_max_age_seconds=2))
    async with serve(app) as client:
        token = await signed_in(client)
        # Sent by hand from now on: the cookie's Max-Age would have the client drop it on time by itself.
        cookie = {"Cookie": f"{SESSION_COOKIE}={client.cookies[SESSION_COOKIE]}"}
        client.cookies.clear()
        first = await client.get("/ui/widgets", headers=cookie)

        async def refused() -> bool:
            # Each look is a request of the session's own: none of them may extend it.
            return (await client.get("/ui/widgets", headers=cookie)).status_code == 401

        await eventually(refused, 10, "the session to end at its lifetime")
        write = await client.post("/ui/widgets", json=WIDGET, headers=token | cookie)
        page = await client.get("/", headers=cookie)

    assert first.status_code == 200
    assert_problem(write, 401)
    assert 'action="/ui/sign-in"' in page.text
    assert await stored_sessions(app) == []


async def test_an_idle_timeout_ends_a_session_left_alone_and_not_one_in_use(embedded_settings: Settings) -> None:
    idle_s = 2
    app = create_app(msgspec.structs.replace(embedded_settings, session_idle_timeout_seconds=idle_s))
    async with serve(app) as client:
        await signed_in(client)
        in_use = []
        until = time.monotonic() + 1.5 * idle_s
        while time.monotonic() < until:  # someone at the page, longer than the idle timeout in all
            in_use.append((await client.get("/ui/widgets")).status_code)
            await asyncio.sleep(idle_s / 10)

        async def ended() -> bool:  # looked for in the store: a request would count as use
            return await stored_sessions(app) == []

        await eventually(ended, 10, "the session left alone to end")
        after = await client.get("/ui/widgets")

    assert set(in_use) == {200}
    assert_problem(after, 401)


class PageScripts(HTMLParser):
    """What a page would run: its script elements and its event-handler attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.handlers: list[str] = []
        self._in_script = False
        self.inline_code = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handlers += [name for name, _ in attrs if name.startswith("on")]
        self.handlers += [name for name, value in attrs if (value or "").strip().lower().startswith("javascript:")]
        if tag == "script":
            self.scripts.append(dict(attrs))
            self._in_script = True

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.inline_code += data.strip()


def csp_directives(response: httpx.Response) -> dict[str, list[str]]:
    policy = response.headers["content-security-policy"]
    return {name: values for name, *values in (d.split() for d in policy.split(";") if d.strip())}


async def test_dashboard_pages_tell_the_browser_to_run_only_their_own_scripts_and_not_be_framed(
    client: httpx.AsyncClient,
) -> None:
    sign_in_page = await client.get("/")
    refused_sign_in = await client.post("/ui/sign-in", data={"key": "not-a-key"})
    unauthorized = await client.get("/ui/widgets")
    await signed_in(client)
    dashboard = await client.get("/")
    read = await client.get("/ui/widgets")
    static = await client.get("/ui/static/dashboard.js")

    for response in (sign_in_page, refused_sign_in, unauthorized, dashboard, read, static):
        policy = csp_directives(response)
        assert policy["script-src"] == ["'self'"], response.request.url
        assert policy["frame-ancestors"] == ["'none'"]
        assert not [values for values in policy.values() if "'unsafe-inline'" in values or "'unsafe-eval'" in values]
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    for response in (sign_in_page, refused_sign_in, unauthorized, dashboard, read):
        assert response.headers["cache-control"] == "no-store", response.request.url
    assert 'name="csrf-token"' in dashboard.text
    assert static.status_code == 200 and "no-store" not in static.headers.get("cache-control", "")


async def test_dashboard_pages_hold_no_script_the_policy_would_block(client: httpx.AsyncClient) -> None:
    pages = [(await client.get("/")).text]
    await signed_in(client)
    pages.append((await client.get("/")).text)

    for page in pages:
        found = PageScripts()
        found.feed(page)
        assert found.handlers == []
        assert found.inline_code == ""
        assert all((script.get("src") or "").startswith("/ui/static/") for script in found.scripts)
    assert found.scripts  # the dashboard has its scripts, from files


async def test_the_pages_admin_reads_answer_only_a_session_whose_key_has_the_admin_scope(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post("/widgets", json=WIDGET | {"internal_notes": NOTES}, headers=AUTH | WAIT)
    anonymous = await client.get("/ui/admin/widgets")
    await signed_in(client)
    writer_page = await client.get("/")
    writer_reads = [await client.get(path) for path in ("/ui/admin/widgets", "/ui/admin/widgets/UI-1")]
    public_read = await client.get("/ui/widgets")
    await signed_in(client, ADMIN_KEY)
    admin_page = await client.get("/")
    admin_list = await client.get("/ui/admin/widgets", params={"search": "from the"})
    admin_one = await client.get("/ui/admin/widgets/UI-1")
    unchanged = await client.get("/ui/admin/widgets/UI-1", headers={"If-None-Match": '"1"'})

    assert created.status_code == 200, created.text
    assert_problem(anonymous, 401)
    for response in writer_reads:
        problem = assert_problem(response, 403)
        assert problem["type"].endswith("/problems/forbidden") and "'admin' scope" in problem["detail"]
    assert public_read.status_code == 200 and public_read.json()["total"] == 1
    assert NOTES not in public_read.text and "internal_notes" not in public_read.text
    # A write key's page has no place for notes and no address to read them from.
    assert "internal_notes" not in writer_page.text and "/ui/admin" not in writer_page.text
    assert 'name="internal_notes"' in admin_page.text and 'content="/ui/admin/widgets"' in admin_page.text
    assert admin_list.status_code == 200, admin_list.text
    assert [(item["sku"], item["internal_notes"]) for item in admin_list.json()["items"]] == [("UI-1", NOTES)]
    assert admin_one.status_code == 200 and admin_one.json()["internal_notes"] == NOTES
    assert admin_one.headers["etag"] == '"1"' and admin_one.headers["cache-control"] == "no-store"
    assert (unchanged.status_code, unchanged.content) == (304, b"")
