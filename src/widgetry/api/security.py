"""Who may do what: API keys (`X-API-Key: <key>` or `Authorization: Bearer <key>`, compared as hashes in constant time)
with their scopes (`write` for commands, `admin` for internal fields and operator routes) on the API, and whatever
scheme a router names in its `opt` (the dashboard's session) where the same handlers are registered again."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import SecurityRequirement, SecurityScheme
from litestar.types import Guard

from widgetry.domain.models import Scope
from widgetry.services.keys import ApiKeyService, digest
from widgetry.services.units import unit_of_work

if TYPE_CHECKING:
    from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig

    from widgetry.settings import Settings

REFUSED_CACHE_SIZE = 10_000
"""Refused fingerprints remembered at most: bounds the memory that made-up keys can take."""
API_KEY_HEADER = "X-API-Key"
SECURITY_SCHEMES = {
    "apiKey": SecurityScheme(type="apiKey", name=API_KEY_HEADER, security_scheme_in="header"),
    "bearer": SecurityScheme(type="http", scheme="bearer", description="The same API key, as a bearer token."),
}
"""The two ways to send a key, as the OpenAPI document declares them (so its "try it" can send one)."""


ANONYMOUS: list[SecurityRequirement] = [{}]
"""The `security` of an operation anyone may call, whatever the document's default (a key, when reads are
protected)."""


def key_security(*scopes: Scope) -> list[SecurityRequirement]:
    """An operation's OpenAPI `security`: a key sent either way, with these scopes (OpenAPI 3.1 lets schemes other
    than OAuth name the roles they need)."""
    return [{scheme: list(scopes)} for scheme in SECURITY_SCHEMES]


class Client(msgspec.Struct, frozen=True):
    """Who sent a request: the fingerprint of its key (never the key) and what that key may do."""

    fingerprint: str
    scopes: frozenset[Scope]


class ApiKeys:
    """The keys accepted, with their scopes: those of the settings (`WIDGETRY_API_KEYS`, `WIDGETRY_ADMIN_KEYS`), and
    those made with `widgetry keys create` that are not revoked. Only digests are held, so a key is never kept or
    logged in the clear.

    A stored key is looked up once and then trusted for `ttl` seconds (so a revoke takes effect within that), and an
    unknown key is refused from memory for as long (so one bad key sent again and again costs one query, not one
    per request; keys made up afresh each time are the rate limiter's business).
    """

    def __init__(
        self, keys: Mapping[str, frozenset[Scope]], alchemy: SQLAlchemyAsyncConfig | None = None, ttl: float = 5.0
    ) -> None:
        self._digests = {digest(key): scopes for key, scopes in keys.items()}
        self._alchemy = alchemy
        self._ttl = ttl
        self._stored: dict[str, tuple[float, frozenset[Scope]]] = {}
        """Accepted stored keys' fingerprints, each with the time its acceptance must be checked again and its
        scopes."""
        self._refused: dict[str, float] = {}
        """Unknown or revoked fingerprints, each with the time the refusal expires, oldest first."""

    @classmethod
    def configured(cls, settings: Settings, alchemy: SQLAlchemyAsyncConfig) -> ApiKeys:
        writers = dict.fromkeys(settings.effective_api_keys, frozenset({Scope.WRITE}))
        admins = dict.fromkeys(settings.effective_admin_keys, frozenset({Scope.WRITE, Scope.ADMIN}))
        return cls(writers | admins, alchemy, ttl=settings.api_key_cache_seconds)

    async def authenticate(self, presented: str | None) -> Client | None:
        """The client the presented key signs in, or `None` for a missing, unknown or revoked key."""
        if not presented:
            return None
        return await self.client(digest(presented))

    async def client(self, fingerprint: str) -> Client | None:
        """The client of the key with this fingerprint while that key is accepted (a dashboard session, which holds
        the fingerprint, ends with its key and has the key's scopes)."""
        scopes = self._configured(fingerprint)
        if scopes is None:
            scopes = await self._stored_scopes(fingerprint)
        return None if scopes is None else Client(fingerprint, scopes)

    async def is_active(self, fingerprint: str) -> bool:
        return await self.client(fingerprint) is not None

    def fingerprint(self, presented: str | None) -> str | None:
        """The hex digest of an accepted key, to name it where it must be told apart from others (per-key limits)
        without writing the key itself anywhere; `None` for a missing or unknown key.

        Synchronous, from memory: a stored key counts once a request has authenticated with it in this process, and
        until a check finds it revoked."""
        if not presented:
            return None
        fingerprint = digest(presented)
        return fingerprint if self._configured(fingerprint) is not None or fingerprint in self._stored else None

    def _configured(self, fingerprint: str) -> frozenset[Scope] | None:
        # Compare against every key, so the time taken does not tell which one nearly matched.
        matches = [scopes for known, scopes in self._digests.items() if hmac.compare_digest(fingerprint, known)]
        return matches[0] if matches else None

    async def _stored_scopes(self, fingerprint: str) -> frozenset[Scope] | None:
        if self._alchemy is None:
            return None
        now = time.monotonic()
        if (stored := self._stored.get(fingerprint)) is not None and now < stored[0]:
            return stored[1]
        if (refused := self._refused.get(fingerprint)) is not None and now < refused:
            return None
        async with unit_of_work(self._alchemy) as session:
            scopes = await ApiKeyService(session=session).check(fingerprint)
        now = time.monotonic()
        if scopes is not None:
            self._stored[fingerprint] = (now + self._ttl, scopes)
            self._refused.pop(fingerprint, None)
        else:
            self._stored.pop(fingerprint, None)
            self._refuse(fingerprint, now)
        return scopes

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


Authenticate = Callable[[ASGIConnection], Awaitable[Client | None]]
"""A scheme: the client the connection comes from, or `None` when it is not signed in (it may also raise an exception
of its own, a redirect to a sign-in page say)."""
AUTHENTICATE = "authenticate"
"""The `opt` key under which a router names the scheme its guarded handlers use; the API's is `api_key_client`."""


async def api_key_client(connection: ASGIConnection) -> Client | None:
    return await connection.app.state.api_keys.authenticate(presented_key(connection))


async def api_key_guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Any accepted key, whatever its scopes: reads, when the settings protect them."""
    # Async although it may not await: Litestar runs a synchronous guard in a worker thread, on every request.
    if await api_key_client(connection) is None:
        raise _unauthorized()


def requires(scope: Scope) -> Guard:
    """A guard that admits a client whose key has `scope`, signed in with the scheme of the router the handler is
    registered under: one handler, registered once under the API (API keys) and once under the dashboard (a
    session), two ways to sign in. No key, or one not accepted, is 401; a key without the scope is 403."""

    async def guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
        authenticate: Authenticate = handler.opt.get(AUTHENTICATE, api_key_client)
        client = await authenticate(connection)
        if client is None:
            raise _unauthorized()
        if scope not in client.scopes:
            raise PermissionDeniedException(f"This API key lacks the '{scope}' scope that this route needs.")
        connection.state.client = client.fingerprint

    return guard


writer_guard = requires(Scope.WRITE)
admin_guard = requires(Scope.ADMIN)


def _unauthorized() -> NotAuthorizedException:
    return NotAuthorizedException(
        f"A valid API key is required: send it as '{API_KEY_HEADER}: <key>' or 'Authorization: Bearer <key>'.",
        headers={"WWW-Authenticate": 'Bearer realm="widgetry"'},
    )
