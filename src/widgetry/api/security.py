"""Who may write: API keys (`X-API-Key: <key>` or `Authorization: Bearer <key>`, compared as hashes in constant time)
on the API, and whatever scheme a router names in its `opt` (the dashboard's session) where the same write handlers
are registered again."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler


class ApiKeys:
    """Holds only digests of the keys, so a key is never kept or logged in the clear after start-up."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(key) for key in keys)

    async def authenticate(self, presented: str | None) -> str | None:
        """The fingerprint of the presented key if it is accepted, else `None`."""
        return self.fingerprint(presented)

    async def is_active(self, fingerprint: str) -> bool:
        """Whether the key with this fingerprint is still accepted (a session signed in with a key ends with it)."""
        return any([hmac.compare_digest(fingerprint, known.hex()) for known in self._digests])  # noqa: C419

    def accepts(self, presented: str | None) -> bool:
        return self.fingerprint(presented) is not None

    def fingerprint(self, presented: str | None) -> str | None:
        """The hex digest of an accepted key, to name it where it must be told apart from others (per-key limits)
        without writing the key itself anywhere; `None` for a missing or unknown key."""
        if not presented:
            return None
        digest = _digest(presented)
        # Compare against every key, so the time taken does not tell which one nearly matched.
        if any([hmac.compare_digest(digest, known) for known in self._digests]):  # noqa: C419
            return digest.hex()
        return None


def presented_key(connection: ASGIConnection) -> str | None:
    if key := connection.headers.get("x-api-key"):
        return key
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


Authenticate = Callable[[ASGIConnection], Awaitable[str | None]]
"""A scheme: the fingerprint of the client the connection comes from, or `None` when it is not signed in (it may
also raise an exception of its own, a redirect to a sign-in page say)."""
AUTHENTICATE = "authenticate"
"""The `opt` key under which a router names the scheme its write handlers use; the API's is `api_key_client`."""


async def api_key_client(connection: ASGIConnection) -> str | None:
    return await connection.app.state.api_keys.authenticate(presented_key(connection))


async def api_key_guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    # Async although it may not await: Litestar runs a synchronous guard in a worker thread, on every request.
    if await api_key_client(connection) is None:
        raise _unauthorized()


async def writer_guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Guards the write handlers with the scheme of the router they are registered under: one handler, registered
    once under the API (API keys) and once under the dashboard (a session), two ways to sign in."""
    authenticate: Authenticate = handler.opt.get(AUTHENTICATE, api_key_client)
    client = await authenticate(connection)
    if client is None:
        raise _unauthorized()
    connection.state.client = client


def _unauthorized() -> NotAuthorizedException:
    return NotAuthorizedException(
        "A valid API key is required: send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'.",
        headers={"WWW-Authenticate": 'Bearer realm="widgetry"'},
    )


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
