"""A Python client for widgetry's HTTP API, on httpx: `WidgetryClient` (sync) and `AsyncWidgetryClient` (async).

Both build every request and read every response through the same `_Call`s below; each only sends them. Problem
responses (RFC 9457) become `ProblemError`, carrying the problem. The event stream (`events()`) reconnects on its own
and resumes with `Last-Event-ID`, so a consumer sees every event once, in order, across disconnects and restarts.

    async with AsyncWidgetryClient("http://127.0.0.1:8000", api_key="wdg_...") as client:
        command = await client.create("SPR-1", "Sprocket", 1999)
        done = await client.wait(command)
        async for event in client.events(sku=["SPR-1"]):
            print(event.type, event.version)
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

import httpx
import msgspec
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse

from widgetry.domain.events import STREAM_RESET

DEFAULT_URL = "http://127.0.0.1:8000"
URL_VARIABLE = "WIDGETRY_URL"
FINISHED = frozenset({"succeeded", "failed"})
RETRYABLE = frozenset({429, 502, 503, 504})
"""Statuses an event stream is opened again after (honouring `Retry-After`); any other refusal is raised."""
POLL_FIRST_S, POLL_MAX_S = 0.05, 1.0
RECONNECT_FIRST_S, RECONNECT_MAX_S = 0.1, 2.0
STREAM_READ_TIMEOUT_S = 60.0
"""Four of the server's 15 s keepalives: a stream silent for longer is dead (a vanished host), and is reopened."""
WAIT_MARGIN_S = 10.0
"""Added to a request's timeout when it asks the server to wait (`Prefer: wait`)."""

T = TypeVar("T")


class Widget(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    name: str
    price_cents: int
    version: int
    created_at: datetime
    updated_at: datetime


class WidgetPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Widget]
    total: int
    limit: int
    offset: int


class CommandLinks(msgspec.Struct, frozen=True):
    self: str
    widget: str | None = None


class Command(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    type: str
    status: str
    """`accepted`, `running`, `succeeded` or `failed`."""
    sku: str | None
    accepted_at: datetime
    finished_at: datetime | None = None
    progress: dict[str, int] | None = None
    error: dict[str, Any] | None = None
    """The problem a failed command ended with."""
    result: dict[str, Any] | None = None
    links: CommandLinks | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One event of the stream: its position (`id`, what resuming starts after), its type, and the envelope.
    A `stream.reset` (the cursor was older than the stream keeps: refetch what you hold) has no envelope."""

    id: str | None = None
    type: str
    event_id: UUID | None = None
    sku: str | None = None
    version: int | None = None
    command_id: UUID | None = None
    occurred_at: datetime | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)


class WidgetryError(Exception):
    pass


class ProblemError(WidgetryError):
    """The service answered with a problem (`application/problem+json`); `problem` is its body."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}".strip())

    @property
    def type(self) -> str:
        return str(self.problem.get("type", "about:blank"))

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail", ""))

    @property
    def invalid_params(self) -> list[dict[str, str]]:
        return list(self.problem.get("invalid_params", []))


class CommandTimeout(WidgetryError, TimeoutError):
    """The command did not finish in time; `command` is how it stood when the time ran out."""

    def __init__(self, command: Command, timeout: float) -> None:
        self.command = command
        super().__init__(f"command {command.id} still {command.status} after {timeout:g} s")


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One request and how to read its answer: what both clients send, built once."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    json: Any = None
    params: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    """`None`: the client's own."""


def _problem(response: httpx.Response) -> ProblemError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"status": response.status_code, "title": response.reason_phrase, "detail": response.text[:500]}
    return ProblemError(response.status_code, body)


def _reader(model: type[T], *ok: int) -> Callable[[httpx.Response], T]:
    def read(response: httpx.Response) -> T:
        if response.status_code not in ok:
            raise _problem(response)
        return msgspec.json.decode(response.content, type=model)

    return read


_read_command = _reader(Command, 200, 202)


def _write(
    method: str,
    path: str,
    body: Any,
    *,
    idempotency_key: str | None,
    wait: int | None,
    if_match: int | str | None = None,
) -> _Call[Command]:
    headers = {}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    if wait:
        headers["Prefer"] = f"wait={wait}"
    if if_match is not None:
        headers["If-Match"] = f'"{if_match}"' if isinstance(if_match, int) else if_match
    return _Call(
        method, path, _read_command, json=body, headers=headers, timeout=wait + WAIT_MARGIN_S if wait else None
    )


def _create(sku: str, name: str, price_cents: int, internal_notes: str | None, **write: Any) -> _Call[Command]:
    body = {"sku": sku, "name": name, "price_cents": price_cents}
    if internal_notes is not None:
        body["internal_notes"] = internal_notes
    return _write("POST", "/widgets", body, **write)


def _import(widgets: Iterable[Mapping[str, Any]], **write: Any) -> _Call[Command]:
    return _write("POST", "/widgets/imports", {"widgets": [dict(widget) for widget in widgets]}, **write)


def _list_widgets(
    limit: int | None, offset: int | None, search: str | None, order_by: str | None, sort: str | None
) -> _Call[WidgetPage]:
    given = {"limit": limit, "offset": offset, "search": search, "order_by": order_by, "sort": sort}
    params = {name: value for name, value in given.items() if value is not None}
    return _Call("GET", "/widgets", _reader(WidgetPage, 200), params=params)


def _ready() -> _Call[bool]:
    return _Call("GET", "/ready", lambda response: response.status_code == 200)


def _command_id(command: Command | UUID | str) -> str:
    return str(command.id if isinstance(command, Command) else command)


class _Waiting:
    """How `wait` polls: `GET /commands/{id}`, at growing intervals, until the command finishes or time is up.

    Polling the command, rather than watching the event stream for its id, because the command's row is where its
    outcome is committed (with its event, in one transaction): the event reaches the stream only after the commit,
    later still if Redis was down (the relay publishes it), and a stream opened after the command finished would
    never see it. The row answers the same however the command ended, and whenever the question is asked.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._interval = POLL_FIRST_S

    def pause(self, command: Command) -> float | None:
        """How long to wait before asking again; `None` once it is finished."""
        if command.finished:
            return None
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise CommandTimeout(command, self.timeout)
        pause, self._interval = min(self._interval, remaining), min(self._interval * 2, POLL_MAX_S)
        return pause


class _Resumable:
    """An event stream's position and manners across connections: where to resume, how long to back off, which
    refusals end it. Both clients' `events()` drive one of these."""

    def __init__(self, sku: str | Iterable[str] | None, types: Iterable[str] | None, last_event_id: str | None):
        self.params: list[tuple[str, str]] = [
            ("sku", value) for value in ([sku] if isinstance(sku, str) else sku or [])
        ]
        if types:
            self.params.append(("types", ",".join(types)))
        self.last_event_id = last_event_id
        self._backoff = RECONNECT_FIRST_S
        self._retry_after: float | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}

    def opened(self) -> None:
        self._backoff = RECONNECT_FIRST_S

    def refused(self, response: httpx.Response) -> None:
        """A refusal worth retrying is noted (with its `Retry-After`); any other is raised. The body must be read."""
        if response.status_code not in RETRYABLE:
            raise _problem(response)
        retry_after = response.headers.get("Retry-After", "")
        self._retry_after = float(retry_after) if retry_after.isdigit() else None

    def received(self, message: ServerSentEvent) -> Event | None:
        # Messages without data carry nothing: a `retry:` line, and the empty event httpx-sse makes of a keepalive
        # comment that follows an `id:` line.
        if not message.data:
            return None
        if message.event == STREAM_RESET:
            return Event(id=message.id or None, type=STREAM_RESET)
        event = msgspec.json.decode(message.data, type=Event)
        if message.id:
            self.last_event_id = message.id
            event = msgspec.structs.replace(event, id=message.id)
        return event

    def pause(self) -> float:
        """Before opening the stream again: the server's `Retry-After`, else a growing, jittered backoff (a restarted
        server is not met by all its clients at the same instant)."""
        if self._retry_after is not None:
            pause, self._retry_after = self._retry_after, None
            return pause
        pause, self._backoff = self._backoff, min(self._backoff * 2, RECONNECT_MAX_S)
        return pause * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret


def service_url(url: str | None = None) -> str:
    """`url`, else `WIDGETRY_URL`, else the local default."""
    return url or os.environ.get(URL_VARIABLE) or DEFAULT_URL


def _headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


def _stream_timeout(read: float) -> httpx.Timeout:
    return httpx.Timeout(10.0, read=read)


class WidgetryClient:
    """The API over one `httpx.Client`. `url` defaults to `WIDGETRY_URL`, else http://127.0.0.1:8000. Writes take
    `idempotency_key` (a retried write returns the original command) and `wait` (seconds the server may wait for the
    outcome: `Prefer: wait`; a command that failed meanwhile raises its problem)."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=service_url(url), headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def __enter__(self) -> WidgetryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call[T]) -> T:
        timeout = call.timeout if call.timeout is not None else self._http.timeout
        response = self._http.request(
            call.method, call.path, json=call.json, params=call.params, headers=call.headers, timeout=timeout
        )
        return call.read(response)

    def create(
        self,
        sku: str,
        name: str,
        price_cents: int,
        internal_notes: str | None = None,
        *,
        idempotency_key: str | None = None,
        wait: int | None = None,
    ) -> Command:
        return self._send(_create(sku, name, price_cents, internal_notes, idempotency_key=idempotency_key, wait=wait))

    def update(
        self,
        sku: str,
        *,
        if_match: int | str | None = None,
        idempotency_key: str | None = None,
        wait: int | None = None,
        **changes: Any,
    ) -> Command:
        return self._send(
            _write("PATCH", f"/widgets/{sku}", changes, idempotency_key=idempotency_key, wait=wait, if_match=if_match)
        )

    def delete(
        self,
        sku: str,
        if_match: int | str | None = None,
        *,
        idempotency_key: str | None = None,
        wait: int | None = None,
    ) -> Command:
        return self._send(
            _write("DELETE", f"/widgets/{sku}", None, idempotency_key=idempotency_key, wait=wait, if_match=if_match)
        )

    def import_widgets(
        self, widgets: Iterable[Mapping[str, Any]], *, idempotency_key: str | None = None, wait: int | None = None
    ) -> Command:
        return self._send(_import(widgets, idempotency_key=idempotency_key, wait=wait))

    def get_widget(self, sku: str) -> Widget:
        return self._send(_Call("GET", f"/widgets/{sku}", _reader(Widget, 200)))

    def list_widgets(
        self,
        *,
        limit: int | None = None,
        offset: int | None = None,
        search: str | None = None,
        order_by: str | None = None,
        sort: str | None = None,
    ) -> WidgetPage:
        return self._send(_list_widgets(limit, offset, search, order_by, sort))

    def command(self, command: Command | UUID | str) -> Command:
        return self._send(_Call("GET", f"/commands/{_command_id(command)}", _reader(Command, 200)))

    def ready(self) -> bool:
        """Whether the service answers `/ready` (its database and Redis answer it)."""
        return self._send(_ready())

    def wait(self, command: Command | UUID | str, timeout: float = 30.0) -> Command:
        """The command once finished (`succeeded` or `failed`: look at `status` and `error`); raises
        `CommandTimeout` if it is not within `timeout` seconds."""
        waiting = _Waiting(timeout)
        while (pause := waiting.pause(current := self.command(command))) is not None:
            time.sleep(pause)
        return current

    def events(
        self,
        sku: str | Iterable[str] | None = None,
        types: Iterable[str] | None = None,
        last_event_id: str | None = None,
        *,
        read_timeout: float = STREAM_READ_TIMEOUT_S,
    ) -> Iterator[Event]:
        """Every event (of these skus and types) after `last_event_id`, then live ones, for ever: see
        `AsyncWidgetryClient.events`."""
        stream = _Resumable(sku, types, last_event_id)
        while True:
            try:
                with connect_sse(
                    self._http,
                    "GET",
                    "/events",
                    params=stream.params,
                    headers=stream.headers,
                    timeout=_stream_timeout(read_timeout),
                ) as source:
                    if source.response.status_code != 200:
                        source.response.read()
                        stream.refused(source.response)
                    else:
                        stream.opened()
                        for message in source.iter_sse():
                            if (event := stream.received(message)) is not None:
                                yield event
            except httpx.TransportError:
                pass
            time.sleep(stream.pause())


class AsyncWidgetryClient:
    """`WidgetryClient` for asyncio: the same methods, awaited, and `events()` as an async iterator."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=service_url(url), headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncWidgetryClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call[T]) -> T:
        timeout = call.timeout if call.timeout is not None else self._http.timeout
        response = await self._http.request(
            call.method, call.path, json=call.json, params=call.params, headers=call.headers, timeout=timeout
        )
        return call.read(response)

    async def create(
        self,
        sku: str,
        name: str,
        price_cents: int,
        internal_notes: str | None = None,
        *,
        idempotency_key: str | None = None,
        wait: int | None = None,
    ) -> Command:
        return await self._send(
            _create(sku, name, price_cents, internal_notes, idempotency_key=idempotency_key, wait=wait)
        )

    async def update(
        self,
        sku: str,
        *,
        if_match: int | str | None = None,
        idempotency_key: str | None = None,
        wait: int | None = None,
        **changes: Any,
    ) -> Command:
        return await self._send(
            _write("PATCH", f"/widgets/{sku}", changes, idempotency_key=idempotency_key, wait=wait, if_match=if_match)
        )

    async def delete(
        self,
        sku: str,
        if_match: int | str | None = None,
        *,
        idempotency_key: str | None = None,
        wait: int | None = None,
    ) -> Command:
        return await self._send(
            _write("DELETE", f"/widgets/{sku}", None, idempotency_key=idempotency_key, wait=wait, if_match=if_match)
        )

    async def import_widgets(
        self, widgets: Iterable[Mapping[str, Any]], *, idempotency_key: str | None = None, wait: int | None = None
    ) -> Command:
        return await self._send(_import(widgets, idempotency_key=idempotency_key, wait=wait))

    async def get_widget(self, sku: str) -> Widget:
        return await self._send(_Call("GET", f"/widgets/{sku}", _reader(Widget, 200)))

    async def list_widgets(
        self,
        *,
        limit: int | None = None,
        offset: int | None = None,
        search: str | None = None,
        order_by: str | None = None,
        sort: str | None = None,
    ) -> WidgetPage:
        return await self._send(_list_widgets(limit, offset, search, order_by, sort))

    async def command(self, command: Command | UUID | str) -> Command:
        return await self._send(_Call("GET", f"/commands/{_command_id(command)}", _reader(Command, 200)))

    async def ready(self) -> bool:
        """Whether the service answers `/ready` (its database and Redis answer it)."""
        return await self._send(_ready())

    async def wait(self, command: Command | UUID | str, timeout: float = 30.0) -> Command:
        """The command once finished (`succeeded` or `failed`: look at `status` and `error`); raises
        `CommandTimeout` if it is not within `timeout` seconds."""
        waiting = _Waiting(timeout)
        while (pause := waiting.pause(current := await self.command(command))) is not None:
            await asyncio.sleep(pause)
        return current

    async def events(
        self,
        sku: str | Iterable[str] | None = None,
        types: Iterable[str] | None = None,
        last_event_id: str | None = None,
        *,
        read_timeout: float = STREAM_READ_TIMEOUT_S,
    ) -> AsyncIterator[Event]:
        """Every event (of these skus and types) after `last_event_id`, then live ones, for ever.

        A dropped connection, a server that restarts or sheds load (429, 503) is met by opening the stream again
        from the last event yielded (`Last-Event-ID`): nothing is skipped and nothing comes twice. A `stream.reset`
        event says that resuming was not possible (the cursor was older than the stream keeps): refetch what you
        hold. Any other refusal (401, say) raises `ProblemError`.
        """
        stream = _Resumable(sku, types, last_event_id)
        while True:
            try:
                async with aconnect_sse(
                    self._http,
                    "GET",
                    "/events",
                    params=stream.params,
                    headers=stream.headers,
                    timeout=_stream_timeout(read_timeout),
                ) as source:
                    if source.response.status_code != 200:
                        await source.response.aread()
                        stream.refused(source.response)
                    else:
                        stream.opened()
                        async for message in source.aiter_sse():
                            if (event := stream.received(message)) is not None:
                                yield event
            except httpx.TransportError:
                pass
            await asyncio.sleep(stream.pause())
