"""Who may write: API keys (`X-API-Key: <key>` or `Authorization: Bearer <key>`, compared as hashes in constant time)
on the API, and whatever scheme a router names in its `opt` (the dashboard's session) where the same write handlers
are registered again."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler

from widgetry.services.keys import ApiKeyService, digest

if TYPE_CHECKING:
    from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig

REFUSED_CACHE_SIZE = 10_000
"""Refused fingerprints remembered at most: bounds the memory that made-up keys can take."""


class ApiKeys:
    """The keys accepted on writes: those of the settings (`WIDGETRY_API_KEYS`), and those made with `widgetry keys
    create` that are not revoked. Only digests are held, so a key is never kept or logged in the clear.

    A stored key is looked up once and then trusted for `ttl` seconds (so a revoke takes effect within that), and an
    unknown key is refused from memory for as long (so one bad key sent again and again costs one query, not one
    per request; keys made up afresh each time are the rate limiter's business).
    """

    def __init__(self, keys: Iterable[str], alchemy: SQLAlchemyAsyncConfig | None = None, ttl: float = 5.0) -> None:
        self._digests = tuple(digest(key) for key in keys)
        self._alchemy = alchemy
        self._ttl = ttl
        self._stored: dict[str, float] = {}
        """Accepted stored keys' fingerprints, each with the time its acceptance must be checked again."""
        self._refused: dict[str, float] = {}
        """Unknown or revoked fingerprints, each with the time the refusal expires, oldest first."""

    async def authenticate(self, presented: str | None) -> str | None:
        """The fingerprint of the presented key if it is accepted, else `None`."""
        if not presented:
            return None
        fingerprint = digest(presented)
        if self._configured(fingerprint) or await self._stored_is_active(fingerprint):
            return fingerprint
        return None

    async def is_active(self, fingerprint: str) -> bool:
        """Whether the key with this fingerprint is still accepted (a session signed in with a key ends with it)."""
        return self._configured(fingerprint) or await self._stored_is_active(fingerprint)

    def accepts(self, presented: str | None) -> bool:
        return self.fingerprint(presented) is not None

    def fingerprint(self, presented: str | None) -> str | None:
        """The hex digest of an accepted key, to name it where it must be told apart from others (per-key limits)
        without writing the key itself anywhere; `None` for a missing or unknown key.

        Synchronous, from memory: a stored key counts once a request has authenticated with it in this process, and
        until a check finds it revoked."""
        if not presented:
            return None
        fingerprint = digest(presented)
        return fingerprint if self._configured(fingerprint) or fingerprint in self._stored else None

    def _configured(self, fingerprint: str) -> bool:
        # Compare against every key, so the time taken does not tell which one nearly matched.
        return any([hmac.compare_digest(fingerprint, known) for known in self._digests])  # noqa: C419

    async def _stored_is_active(self, fingerprint: str) -> bool:
        if self._alchemy is None:
            return False
        now = time.monotonic()
        if (recheck := self._stored.get(fingerprint)) is not None and now < recheck:
            return True
        if (refused := self._refused.get(fingerprint)) is not None and now < refused:
            return False
        async with self._alchemy.get_session() as session:
            active = await ApiKeyService(session=session).check(fingerprint)
        now = time.monotonic()
        if active:
            self._stored[fingerprint] = now + self._ttl
            self._refused.pop(fingerprint, None)
        else:
            self._stored.pop(fingerprint, None)
            self._refuse(fingerprint, now)
        return active

    def _refuse(self, fingerprint: str, now: float) -> None:
        self._refused.pop(fingerprint, None)
        self._refused[fingerprint] = now + self._ttl
        # Entries are kept in the order they expire: drop the expired ones, and the oldest past the cap.
        while self._refused:
            oldest, expires = next(iter(self._refused.items()))
            if expires > now and len(self._refused) <= REFUSED_CACHE_SIZE:
                break
            del self._refused[oldest]


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
