"""A lean HTTP/1.1 client on asyncio: keep-alive writes answered with a Content-Length body, and server-sent event
streams read from a chunked body.

A general-purpose client spends more CPU per request than the service under test, on the machine they share; this
one does what the bench needs and no more, and runs on uvloop when it is installed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple, TypeVar, cast
from urllib.parse import urlsplit

T = TypeVar("T")

IDLE_REOPEN_S = 2.0
"""A keep-alive connection idle longer than this is reopened before use: the server (uvicorn: after 5 s) may close
it just as a request goes out, and a write lost that way would be counted against the service."""
MESSAGE_END = b"\r\n\r\n"
"""The blank line that ends an SSE message; the service ends every line with CRLF."""


class ProtocolError(Exception):
    """The answer is not what the bench expects of HTTP/1.1 or of an event stream."""


TRANSPORT_ERRORS = (OSError, EOFError, asyncio.LimitOverrunError, ProtocolError)
"""A request that got no usable answer: refused, reset, timed out (`TimeoutError` is an `OSError`), cut short."""


def run(main: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine on uvloop when it is importable, else on asyncio's own loop."""
    try:
        import uvloop  # noqa: PLC0415 - optional
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


class Endpoint(NamedTuple):
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected an http://host[:port] URL, not {url!r}")
        return cls(parts.hostname, parts.port or 80)

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"


class Response(NamedTuple):
    status: int
    body: bytes


class Connection:
    """One keep-alive connection carrying one request at a time, opened on first use."""

    def __init__(self, endpoint: Endpoint, headers: dict[str, str] | None = None) -> None:
        self.endpoint = endpoint
        self._head = "".join(
            f"{name}: {value}\r\n" for name, value in {"Host": endpoint.authority, **(headers or {})}.items()
        )
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._last_used = 0.0

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Response:
        """Sends a request and reads its reply; on any failure the connection is closed (and reopened next time)."""
        if self._reader is None or self._reader.at_eof() or time.monotonic() - self._last_used > IDLE_REOPEN_S:
            await self.open()
        assert self._reader is not None and self._writer is not None
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        try:
            self._writer.write(
                f"{method} {path} HTTP/1.1\r\n{self._head}{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body
            )
            head = await self._reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 "):
                raise ProtocolError(f"not an HTTP/1.1 reply: {head[:40]!r}")
            fields = head.lower()
            length = header(fields, b"content-length")
            if length is None:
                raise ProtocolError("a reply without Content-Length")
            reply = Response(int(head[9:12]), await self._reader.readexactly(int(length)))
        except BaseException:
            self.close()
            raise
        if header(fields, b"connection") == b"close":
            self.close()
        self._last_used = time.monotonic()
        return reply

    async def open(self) -> None:
        self.close()
        self._reader, self._writer = await asyncio.open_connection(self.endpoint.host, self.endpoint.port)
        self._last_used = time.monotonic()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def header(fields: bytes, name: bytes) -> bytes | None:
    """A header's value from a lower-cased response head, or `None`."""
    start = fields.find(b"\r\n" + name + b":")
    if start < 0:
        return None
    start += len(name) + 3
    return fields[start : fields.index(b"\r\n", start)].strip()


class EventStream(asyncio.Protocol):
    """One SSE connection: a GET, then a chunked body decoded and split into messages, each handed over with the
    time its bytes arrived. `opened` resolves with the first message (the service sends `retry:` first), `closed`
    when the connection ends."""

    def __init__(self, request: bytes, on_message: Callable[[bytes, int], None]) -> None:
        self._request = request
        self._on_message = on_message
        self._raw = bytearray()
        self._in_body = False
        self._chunk_size: int | None = None
        self._text = b""
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)  # uvloop's transports do not subclass asyncio's
        transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ProtocolError("the stream closed before it opened"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        received_ns = time.time_ns()
        raw = self._raw
        raw += data
        if not self._in_body and not self._read_head():
            return
        text = self._text
        while True:
            if self._chunk_size is None:
                end = raw.find(b"\r\n")
                if end < 0:
                    break
                self._chunk_size = int(raw[:end].split(b";", 1)[0], 16)
                del raw[: end + 2]
                if self._chunk_size == 0:  # the last chunk: the server ended the stream
                    self.close()
                    break
            if len(raw) < self._chunk_size + 2:
                break
            text += raw[: self._chunk_size]
            del raw[: self._chunk_size + 2]
            self._chunk_size = None
        if MESSAGE_END in text:
            *messages, text = text.split(MESSAGE_END)
            if not self.opened.done():
                self.opened.set_result(None)
            for message in messages:
                self._on_message(message, received_ns)
        self._text = text

    def _read_head(self) -> bool:
        end = self._raw.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self._raw[: end + 2]).lower()
        del self._raw[: end + 4]
        if not head.startswith(b"http/1.1 200"):
            self._refuse(f"the event stream was refused: {head[9:12].decode(errors='replace')}")
            return False
        if header(head, b"transfer-encoding") != b"chunked":
            self._refuse("the event stream is not chunked")
            return False
        self._in_body = True
        return True

    def _refuse(self, why: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(ProtocolError(why))
        self.close()


async def open_event_stream(
    endpoint: Endpoint,
    path: str,
    on_message: Callable[[bytes, int], None],
    *,
    last_event_id: bytes | None = None,
    timeout: float = 30,
) -> EventStream:
    """An event stream, once the server has sent its first message."""
    resume = b"Last-Event-ID: " + last_event_id + b"\r\n" if last_event_id else b""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {endpoint.authority}\r\nAccept: text/event-stream\r\n".encode()
        + resume
        + b"\r\n"
    )
    loop = asyncio.get_running_loop()
    _, stream = await loop.create_connection(lambda: EventStream(request, on_message), endpoint.host, endpoint.port)
    try:
        await asyncio.wait_for(stream.opened, timeout)
    except BaseException:
        stream.close()
        raise
    return stream
