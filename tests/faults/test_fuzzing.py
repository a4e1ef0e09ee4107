"""Fuzzing the HTTP API from its own OpenAPI schema: no request gets a 5xx, every error is problem+json, and a
refused write records and queues nothing.

How it is driven, and why. Schemathesis reads the schema the app serves (`/schema/openapi.json`) and gives, per
operation, a Hypothesis strategy for positive cases (valid by the schema) and one for negative cases (breaking it).
The requests do not go out through schemathesis's ASGI transport: it is synchronous, and runs the app, lifespan
included, on an event loop in a thread of its own that it keeps until the process exits, while the app's worker,
event reader and connection pools must share one loop with the requests (`tests.support.running`). So:

- the cases are generated up front, `MAX_EXAMPLES` per operation, mode and codec with `derandomize=True` (every run
  sends the same requests, in CI too), in a thread: Hypothesis is synchronous, and the app keeps running meanwhile.
  With the UTF-8 codec, strings in bodies and queries range over all of Unicode but header values stay ASCII; with
  Latin-1, header values too carry any byte HTTP/1.1 lets through, as a real client's can;
- each case goes out through httpx on this test's loop, serialized by schemathesis (`case.as_transport_kwargs`),
  once without an API key and once with one plus, in turn, the contract's headers with meaningful values
  (`If-Match`, `Idempotency-Key` fresh or reused, `Prefer: wait`): generated values of those rarely mean anything;
- an event stream never ends, and httpx's ASGI transport waits for the whole body: an event-stream response is cut
  after its status and headers (the app then sees the client leave). A refused stream comes whole, as any error;
- a schema says nothing of how deep or wide a body may be, so imports also get hand-made hostile bodies
  (`hostile_imports`): nested far past any decoder's depth, and wide (millions of rows, or keys, or cells, up to the
  10 MiB an import may be), as JSON and as CSV.

Each write is bracketed by the number of command rows and of jobs ever queued (SAQ keeps a key per job): a refused
write must leave both as they were. A command that was accepted and then failed, answered with its failure's
problem because of `Prefer: wait`, is not a refusal: that answer carries `Location: /commands/{id}`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypothesis
import msgspec
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from litestar import Litestar

from tests.summary import report
from tests.support import AUTH, running
from tests.unit.state import CommandRecord, count, queued_jobs
from widgetry.app import create_app
from widgetry.settings import Settings

BASE_URL = "http://widgetry"
SCHEMA_PATH = "/schema/openapi.json"
MAX_EXAMPLES = int(os.environ.get("WIDGETRY_FUZZ_EXAMPLES", "30"))
"""Cases per operation, mode and codec. 30: about 2,000 requests, 20 s on two idle cores, 45 s on busy ones. A deeper
run finds rarer inputs (250: 16,000 requests, 4 to 5 minutes; 100 was the first to find a NUL in `search`)."""
CODECS = ("utf-8", "latin-1")
REQUEST_TIMEOUT_S = 40
"""Longer than the longest wait a client may ask for (`Prefer: wait=30`): a request still running then hangs."""
WRITES = frozenset({"POST", "PATCH", "DELETE"})
PROBLEM_MEMBERS = frozenset({"type", "title", "status", "detail"})

Message = MutableMapping[str, Any]
ASGIApp = Callable[[Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


def contract_headers(number: int) -> dict[str, str]:
    """The headers of docs/api.md, with values that mean something, for the `number`th request sent with a key."""
    return [
        {},
        {"If-Match": '"1"'},
        {"Idempotency-Key": f"fuzz-{number}"},
        {"Prefer": "wait=1"},
        {"If-Match": 'W/"2"', "Idempotency-Key": "fuzz-reused", "Prefer": "return=minimal; wait=1"},
    ][number % 5]


def cut_event_streams(app: ASGIApp) -> ASGIApp:
    """The app, with an event stream ended for the client right after its status and headers."""

    async def asgi(scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[..., Any]) -> None:
        cut = False

        async def forward(message: Message) -> None:
            nonlocal cut
            if cut:
                return
            await send(message)
            if message["type"] == "http.response.start" and _is_event_stream(message.get("headers", [])):
                cut = True
                # httpx's transport now answers the app's next `receive` with a disconnect, which ends the stream.
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await app(scope, receive, forward)

    return asgi


def _is_event_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() == b"content-type" and value.startswith(b"text/event-stream") for name, value in headers)


def generate(schema: dict[str, Any]) -> dict[str, list[schemathesis.Case]]:
    """Positive and negative cases for every operation of the schema, by label; the same ones on every run."""
    cases: dict[str, list[schemathesis.Case]] = {}
    for codec in CODECS:
        config = schemathesis.Config.from_dict({"generation": {"codec": codec}})
        for result in schemathesis.openapi.from_dict(schema, config=config).get_all_operations():
            operation = result.ok()
            for mode in schemathesis.GenerationMode:
                cases.setdefault(operation.label, []).extend(_cases(operation, mode))
    return cases


def _cases(operation: schemathesis.APIOperation, mode: schemathesis.GenerationMode) -> list[schemathesis.Case]:
    cases: list[schemathesis.Case] = []

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(operation.as_strategy(generation_mode=mode))
    def collect(case: schemathesis.Case) -> None:
        cases.append(case)

    try:
        collect()
    except Unsatisfiable:
        # Only an operation that takes no input at all has nothing to break.
        assert mode.is_negative and not any(operation.iter_parameters()) and not operation.body
    return cases


IMPORTS = ("POST", "/widgets/imports")
DEEP_LEVELS = 100_000
"""Far deeper than any JSON decoder here recurses (about 1,000 levels)."""
ROW = b'{"sku": "FUZZ-1", "name": "Fuzz", "price_cents": 1}'


def hostile_imports(schema: dict[str, Any]) -> list[schemathesis.Case]:
    """Import bodies nested too deep or too wide for any schema to say: each must be refused with a 4xx problem."""
    deep_array = b"[" * DEEP_LEVELS + b"]" * DEEP_LEVELS
    deep_object = b'{"a": ' * DEEP_LEVELS + b"1" + b"}" * DEEP_LEVELS
    many_keys = b"{" + b", ".join(b'"k%d": %d' % (i, i) for i in range(200_000)) + b"}"
    csv_header = b"sku,name,price_cents\n"
    bodies = {
        "application/json": [
            deep_array,
            deep_object,
            b'{"widgets": ' + deep_array + b"}",
            b'{"widgets": [' + ROW + b", " + deep_array + b"]}",
            b'{"widgets": [' + ROW + b", " + deep_object + b"]}",
            b'{"widgets": [{"sku": ' + deep_array + b', "name": "Deep", "price_cents": 1}]}',
            b'{"widgets": [' + b",".join([b"{}"] * 3_000_000) + b"]}",
            b'{"widgets": [' + b",".join([ROW] * 10_001) + b"]}",
            b'{"widgets": [' + many_keys + b"]}",
            many_keys,
        ],
        "text/csv": [
            csv_header + b"a,b,1\n" * 1_700_000,
            csv_header + b"".join(b"FUZZ-%d,Fuzz,1\n" % i for i in range(10_001)),
            csv_header + b"FUZZ-1,Fuzz,1," + b",".join([b"x"] * 500_000) + b"\n",
            b",".join(b"c%d" % i for i in range(200_000)) + b"\n" + b"a,b,1\n",
            csv_header + b"\n" * 5_000_000,
        ],
    }
    method, path = IMPORTS
    operation = schemathesis.openapi.from_dict(schema)[path][method]
    return [
        operation.Case(body=body, media_type=media_type) for media_type, listed in bodies.items() for body in listed
    ]


@dataclass
class Findings:
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    non_problems: list[str] = field(default_factory=list)
    writes_on_rejected: list[str] = field(default_factory=list)
    keyless_writes_accepted: list[str] = field(default_factory=list)

    def summary(self, operations: int, cases: int) -> str:
        return (
            f"fuzzing: operations={operations} cases={cases} requests={self.statuses.total()} "
            f"statuses={dict(sorted(self.statuses.items()))} 5xx={len(self.server_errors)} "
            f"non_problem={len(self.non_problems)} writes_on_rejected={len(self.writes_on_rejected)} "
            f"keyless_writes_accepted={len(self.keyless_writes_accepted)}"
        )


def problem_defect(response: httpx.Response) -> str | None:
    """What keeps an error response from being a problem with the members docs/api.md promises, if anything."""
    if not response.headers.get("content-type", "").startswith("application/problem+json"):
        return f"content-type {response.headers.get('content-type')!r}"
    try:
        problem = response.json()
    except ValueError:
        return "a body that is not JSON"
    if not isinstance(problem, dict) or not problem.keys() >= PROBLEM_MEMBERS:
        return f"members {sorted(problem) if isinstance(problem, dict) else type(problem).__name__}"
    if problem["status"] != response.status_code:
        return f"status member {problem['status']!r}"
    return None


async def send(client: httpx.AsyncClient, case: schemathesis.Case, headers: dict[str, str]) -> httpx.Response:
    """The case as schemathesis puts it on the wire (path, query, headers, body bytes), sent through httpx."""
    prepared = requests.Request(**case.as_transport_kwargs(base_url=BASE_URL, headers=headers)).prepare()
    wire_headers = [
        (name.encode(), value.encode("latin-1") if isinstance(value, str) else value)
        for name, value in prepared.headers.items()
        if name.lower() != "content-length"
    ]
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        return await client.request(
            prepared.method or "GET", prepared.url or "/", headers=wire_headers, content=prepared.body
        )


async def written(app: Litestar) -> tuple[int, int]:
    """Command rows, and jobs ever queued."""
    return await count(app, CommandRecord), await queued_jobs(app)


async def check(
    app: Litestar, client: httpx.AsyncClient, case: schemathesis.Case, headers: dict[str, str], findings: Findings
) -> None:
    write = case.method.upper() in WRITES
    before = await written(app) if write else None
    response = await send(client, case, headers)
    findings.statuses[response.status_code] += 1
    request = response.request
    seen = (
        f"{request.method} {request.url} headers={headers} body={request.content[:200]!r}\n"
        f"  -> {response.status_code} {response.text[:300]}"
    )
    if response.status_code >= 500:
        findings.server_errors.append(seen)
    if response.status_code >= 400 and (defect := problem_defect(response)):
        findings.non_problems.append(f"{seen}\n  ({defect})")
    refused = write and response.status_code >= 400 and "location" not in response.headers
    if refused and (after := await written(app)) != before:
        findings.writes_on_rejected.append(f"{seen}\n  (commands, jobs: {before} -> {after})")
    if write and "X-API-Key" not in headers and response.is_success:
        findings.keyless_writes_accepted.append(seen)


@pytest.fixture
def app(real_settings: Settings) -> Litestar:
    """The app on PostgreSQL and Redis, without the per-client rate limit: the fuzzer is one client sending
    thousands of requests a minute, and 429s would stand in for the answers under test."""
    return create_app(msgspec.structs.replace(real_settings, rate_limit_writes="off", rate_limit_reads="off"))


async def test_fuzzed_requests_get_no_5xx_only_problems_and_refused_writes_change_nothing(app: Litestar) -> None:
    started = time.monotonic()
    findings = Findings()
    transport = httpx.ASGITransport(app=cut_event_streams(app))
    async with running(app), httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        schema = (await client.get(SCHEMA_PATH)).raise_for_status().json()
        cases_by_operation = await asyncio.to_thread(generate, schema)
        cases = [case for operation_cases in cases_by_operation.values() for case in operation_cases]
        cases += hostile_imports(schema)
        for number, case in enumerate(cases):
            await check(app, client, case, {}, findings)
            await check(app, client, case, AUTH | contract_headers(number), findings)

    report(f"{findings.summary(len(cases_by_operation), len(cases))} in {time.monotonic() - started:.1f} s")
    assert [label for label, operation_cases in cases_by_operation.items() if not operation_cases] == []
    assert findings.server_errors == [], "\n".join(findings.server_errors[:10])
    assert findings.non_problems == [], "\n".join(findings.non_problems[:10])
    assert findings.writes_on_rejected == [], "\n".join(findings.writes_on_rejected[:10])
    assert findings.keyless_writes_accepted == [], "\n".join(findings.keyless_writes_accepted[:10])


CURSOR_EXAMPLES = int(os.environ.get("WIDGETRY_FUZZ_CURSOR_EXAMPLES", "60"))
"""Cursors per kind (header bytes, query text), each sent to both event streams, with and without a key."""
EVENT_STREAMS = ("/events", "/widgets/FUZZ-1/events")
CONTROL_BYTES = frozenset(b"\r\n\x00")
"""What an HTTP/1.1 server never hands an app inside a header value."""


def hostile_cursors() -> tuple[list[bytes], list[str]]:
    """`Last-Event-ID` header values as bytes on the wire (the app reads them as Latin-1), and `last_event_id` query
    values as text (the app reads percent-encoded UTF-8): digits of every script, numbers past `int`'s 4,300-digit
    limit, stream-id parts past 64 bits, and anything else; the same ones on every run."""
    digits = st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=30)
    huge = st.integers(4_300, 12_000).map(lambda places: "9" * places)
    past_64_bits = st.integers(2**64, 2**80).map(str)
    part = st.one_of(digits, huge, past_64_bits, st.text(max_size=40))
    as_text = st.one_of(st.tuples(part, part).map("-".join), part)
    as_latin_1 = st.one_of(
        as_text.map(lambda text: text.encode("latin-1", "replace")),
        st.binary(max_size=200),
    ).filter(lambda value: not CONTROL_BYTES & set(value))
    return _examples(as_latin_1), _examples(as_text)


def _examples(strategy: st.SearchStrategy[Any]) -> list[Any]:
    found: list[Any] = []

    @hypothesis.settings(
        max_examples=CURSOR_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found


def raising_after_start(app: ASGIApp, failures: list[str]) -> ASGIApp:
    """The app, with an exception it raises once its response has started noted in `failures` and not raised: the
    client has a 200 and a stream that died, which is what it must never get."""

    async def asgi(scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[..., Any]) -> None:
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, watched)
        except Exception as error:
            if not started:
                raise
            failures.append(
                f"{scope['path']}?{scope['query_string'][:80]!r} headers={scope['headers']!r:.300}: {error!r}"
            )

    return asgi


async def test_hostile_cursors_on_the_event_streams_get_no_5xx_and_no_dead_stream(app: Litestar) -> None:
    started = time.monotonic()
    findings = Findings()
    dead_streams: list[str] = []
    transport = httpx.ASGITransport(app=raising_after_start(cut_event_streams(app), dead_streams))
    headers_sent, queries_sent = await asyncio.to_thread(hostile_cursors)
    requests_to_send = [(path, {"Last-Event-ID": value}, {}) for value in headers_sent for path in EVENT_STREAMS] + [
        (path, {}, {"last_event_id": value}) for value in queries_sent for path in EVENT_STREAMS
    ]
    async with running(app), httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        for path, headers, params in requests_to_send:
            for auth in ({}, AUTH):
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    response = await client.get(path, headers=headers | auth, params=params)
                findings.statuses[response.status_code] += 1
                seen = f"GET {response.request.url} headers={headers} -> {response.status_code} {response.text[:300]}"
                if response.status_code >= 500:
                    findings.server_errors.append(seen)
                if response.status_code >= 400 and (defect := problem_defect(response)):
                    findings.non_problems.append(f"{seen}\n  ({defect})")
    findings.server_errors += dead_streams

    cases = len(headers_sent) + len(queries_sent)
    report(f"{findings.summary(len(EVENT_STREAMS), cases)} (hostile cursors) in {time.monotonic() - started:.1f} s")
    assert findings.server_errors == [], "\n".join(findings.server_errors[:10])
    assert findings.non_problems == [], "\n".join(findings.non_problems[:10])
