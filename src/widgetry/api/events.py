"""The event stream over SSE, resumable by `Last-Event-ID`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Annotated, Any

from litestar import Request, get
from litestar.connection import ASGIConnection
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import Stream
from litestar.response.streaming import ASGIStreamingResponse

from widgetry.api.docs import EVENT_STREAM_RESPONSES
from widgetry.api.limits import StreamLimit
from widgetry.api.problems import invalid
from widgetry.api.security import api_key_client
from widgetry.api.widgets import SkuPath
from widgetry.domain.events import EventType
from widgetry.services.unavailable import is_unavailable
from widgetry.streaming.hub import EventHub, Filter

if TYPE_CHECKING:
    from litestar.background_tasks import BackgroundTask, BackgroundTasks
    from litestar.datastructures.cookie import Cookie
    from litestar.enums import MediaType
    from litestar.response.base import ASGIResponse
    from litestar.types import Receive, Send, TypeEncodersMap

logger = logging.getLogger(__name__)

SkuFilter = Annotated[list[str] | None, QueryParameter(description="Only events of these skus (repeatable).")]
TypesFilter = Annotated[
    list[str] | None, QueryParameter(description="Only these event types, comma-separated or repeated.")
]
CursorQuery = Annotated[
    str | None, QueryParameter(name="last_event_id", description="Resume after this event id (as `Last-Event-ID`).")
]
CursorHeader = Annotated[str | None, HeaderParameter(name="Last-Event-ID", description="Resume after this event id.")]
EVENT_STREAM_HEADERS = {"X-Accel-Buffering": "no"}
STREAM_CACHE_CONTROL = CacheControlHeader(no_cache=True)
"""Set on the handlers, not in the response's headers: a handler's own `cache_control` replaces the one its router
gives the reads, where a header of the response's would be sent beside it (`no-cache, no-cache`)."""
STILL_SIGNED_IN = "still_signed_in"
"""A route `opt` key naming a check `(connection) -> bool` that an open stream runs again and again, ending when it
says no: the dashboard's session check. Where reads need a key (`protect_reads`), the stream checks its key."""
CANCEL_AGAIN_S = 0.5
"""How often a stream whose client has left is cancelled again while it has not ended (see `ClientGone`)."""
MIN_SIGN_IN_CHECK_S = 0.1
"""A stream checks its sign-in as often as a web process trusts its look at a key (`api_key_cache_seconds`), and
at most this often when that is 0."""

StillSignedIn = Callable[[ASGIConnection], Awaitable[bool]]


def event_stream(path: str) -> get:
    """The route of an event stream: each with a `StreamLimit` of its own, counting its clients' open streams."""
    return get(
        path,
        media_type="text/event-stream",
        middleware=[StreamLimit()],
        responses=EVENT_STREAM_RESPONSES,
        cache_control=STREAM_CACHE_CONTROL,
    )


@event_stream("/events")
async def stream_events(
    request: Request[Any, Any, Any],
    hub: NamedDependency[EventHub],
    sku: SkuFilter = None,
    types: TypesFilter = None,
    last_event_id: CursorQuery = None,
    last_event_id_header: CursorHeader = None,
) -> Stream:
    """Every event (or those of the given skus and types), live; resumes exactly after a given id."""
    return _stream(request, hub, Filter(sku, _event_types(types)), last_event_id_header or last_event_id)


@event_stream("/widgets/{sku:str}/events")
async def stream_widget_events(
    request: Request[Any, Any, Any],
    hub: NamedDependency[EventHub],
    sku: SkuPath,
    types: TypesFilter = None,
    last_event_id: CursorQuery = None,
    last_event_id_header: CursorHeader = None,
) -> Stream:
    """The events of one widget."""
    return _stream(request, hub, Filter([sku], _event_types(types)), last_event_id_header or last_event_id)


def _stream(request: Request[Any, Any, Any], hub: EventHub, matches: Filter, cursor: str | None) -> Stream:
    messages = hub.subscribe(matches, cursor)
    settings = request.app.state.settings
    still_signed_in: StillSignedIn | None = request.route_handler.opt.get(STILL_SIGNED_IN) or (
        key_still_accepted if settings.protect_reads else None
    )
    if still_signed_in is not None:
        every_s = max(settings.api_key_cache_seconds, MIN_SIGN_IN_CHECK_S)
        messages = _while_signed_in(messages, lambda: still_signed_in(request), every_s)
    # Not ServerSentEvent: the hub encodes each message once and every subscriber sends the bytes.
    return EventStream(messages, media_type="text/event-stream", headers=EVENT_STREAM_HEADERS)


class EventStream(Stream):
    """A `Stream` whose ASGI response is `ASGIEventStream`."""

    def to_asgi_response(
        self,
        app: Any,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        return ASGIEventStream(
            iterator=self.iterator,  # type: ignore[arg-type]
            background=self.background or background,
            content_length=0,
            cookies=self.cookies if cookies is None else [*self.cookies, *cookies],
            encoded_headers=encoded_headers,
            encoding=self.encoding,
            headers={**headers, **self.headers} if headers is not None else self.headers,
            is_head_response=is_head_response,
            media_type=str(self.media_type or media_type),
            status_code=self.status_code or status_code,
        )


class ASGIEventStream(ASGIStreamingResponse):
    """Litestar's streaming response with one task per stream instead of three.

    Litestar's sends the chunks in a task of an anyio task group while the request's task waits for the client's
    disconnect, which cancels the group. An open event stream is mostly idle, and a web process holds thousands:
    the group, its cancel scopes and its second task were some 3 KB of each one's memory, and each chunk went
    through them. Here the request's own task sends the chunks, and a bare task waits for the disconnect and
    cancels it (the hub's and the sign-in check's generators clean up when cancelled, as they did in the group).
    """

    __slots__ = ()

    async def send_body(self, send: Send, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None  # always: the server runs each request in a task
        gone = ClientGone(task)
        disconnect = asyncio.ensure_future(_disconnected(receive))
        disconnect.add_done_callback(gone)
        try:
            await _send_chunks(self.iterator, send)
        except asyncio.CancelledError:
            # Ours (the client left): the response simply ends. Anyone else's (shutdown): it goes on up.
            if not gone.withdraw():
                raise
        else:
            gone.withdraw()
        finally:
            disconnect.remove_done_callback(gone)
            disconnect.cancel()
            gone.stop()


class ClientGone:
    """Cancels a stream's task once its client has left, and again every CANCEL_AGAIN_S until the stream ends.

    asyncio delivers a cancellation once (anyio's task group, which Litestar's response used, delivers it at every
    await until the task ends), and a call may take it in and go on: on Python 3.11, `asyncio.wait_for` returns the
    result of a future that completes as the cancellation arrives and drops the cancellation (seen: redis-py's send,
    which waits for the socket's drain with it, under the replay's `XINFO`). The stream would then stay open, waiting
    for events, with nobody reading it.
    """

    __slots__ = ("_again", "_asked", "_task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self._task = task
        self._asked = 0
        self._again: asyncio.TimerHandle | None = None

    def __call__(self, _: object = None) -> None:
        self._asked += 1
        self._task.cancel()
        self._again = asyncio.get_running_loop().call_later(CANCEL_AGAIN_S, self)

    def withdraw(self) -> bool:
        """Takes back the cancellations asked for here; says whether they are all the task had (none from others)."""
        if not self._asked:
            return False
        left = self._task.cancelling()
        for _ in range(self._asked):
            left = self._task.uncancel()
        self._asked = 0
        return left == 0

    def stop(self) -> None:
        if self._again is not None:
            self._again.cancel()


async def _send_chunks(chunks: AsyncIterable[bytes], send: Send) -> None:
    async for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def key_still_accepted(connection: ASGIConnection) -> bool:
    return await api_key_client(connection) is not None


async def _while_signed_in(
    messages: AsyncGenerator[bytes, None], still_signed_in: Callable[[], Awaitable[bool]], every_s: float
) -> AsyncIterator[bytes]:
    """The stream's messages until its session ends or its key is revoked, asked every `every_s`.

    The wait for the next message runs as a task of its own, so that the check comes on time while no message does
    (keepalives are many seconds apart): a check between messages would leave a signed-out stream open that long.
    """
    next_message = asyncio.ensure_future(anext(messages))
    try:
        while True:
            while not (await asyncio.wait({next_message}, timeout=every_s))[0]:
                if not await _sign_in_stands(still_signed_in):
                    return
            try:
                message = next_message.result()
            except StopAsyncIteration:
                return
            next_message = asyncio.ensure_future(anext(messages))
            yield message
    finally:
        # Synchronous, like the hub's own cleanup: a client disconnect cancels this generator, and an await here too.
        # The hub's generator unsubscribes either way: cancelled where it waits for a message, or closed (in one step,
        # its cleanup awaits nothing) where it stopped at one.
        if next_message.done():
            asyncio.ensure_future(messages.aclose())  # noqa: RUF006
        else:
            next_message.cancel()


async def _sign_in_stands(still_signed_in: Callable[[], Awaitable[bool]]) -> bool:
    try:
        return await still_signed_in()
    except Exception as error:
        if not is_unavailable(error):
            raise
        # Nothing can tell whether the session or key still stands: end the stream; the client resumes by id once
        # it is let in again.
        logger.warning("event stream ended, its sign-in cannot be checked: %r", error)
        return False


def _event_types(raw: list[str] | None) -> list[str] | None:
    if not raw:
        return None
    names = [name.strip() for value in raw for name in value.split(",") if name.strip()]
    known = {member.value for member in EventType}
    if unknown := [name for name in names if name not in known]:
        raise invalid("Unknown event types.", [{"name": "types", "reason": f"unknown: {name}"} for name in unknown])
    return names
