"""The dashboard's sign-in: an API key presented once on the sign-in page, then a session cookie.

The session lives server-side, in a Litestar store over the app's Redis client (fakeredis on the embedded defaults),
rather than in an encrypted cookie: every web process then sees the same sessions with no secret to configure and
share between them, and signing out deletes the session instead of trusting the browser to forget a cookie.
It holds the key's fingerprint (never the key), a token that every write must carry in a header, and when it ends.
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass
from time import time
from typing import TYPE_CHECKING, Any

from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie, MutableScopeHeaders
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.session.server_side import ServerSideSessionBackend, ServerSideSessionConfig
from litestar.stores.redis import RedisStore
from litestar.types import Empty
from redis.asyncio import Redis

from widgetry.settings import Settings

if TYPE_CHECKING:
    from litestar.stores.base import Store
    from litestar.types import Message, ScopeSession

SESSION_STORE = "sessions"
SESSION_COOKIE = "widgetry_session"
SESSION_ID_BYTES = 32
SESSION_ID = re.compile(rf"[0-9a-f]{{{2 * SESSION_ID_BYTES}}}")
"""The shape of the ids this service makes: any other cookie value is dropped before it reaches the store."""
CLIENT = "client"
"""The session's API key fingerprint."""
CSRF = "csrf"
ENDS_AT = "ends_at"
"""When the session ends (Unix time) however busy it is: set at sign-in, never moved."""
CSRF_HEADER = "X-CSRF-Token"
"""A cross-site form can send the session cookie (from a sibling subdomain, where SameSite does not help) but cannot
set a header, nor read the token from the page."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_FRESH_SESSION_ID = "fresh_session_id"
_STORED_SESSION_ID = "stored_session_id"


class SessionBackend(ServerSideSessionBackend):
    """Litestar's server-side sessions, with three rules of the dashboard's own.

    - A session is written once, at sign-in, under an id made then: Litestar would store whatever session a response
      carries under whatever id the cookie names, so any made-up cookie became a stored session, echoed back. Here an
      id that is not in the store is never adopted, and an id planted before sign-in (session fixation) never becomes
      a signed-in session.
    - A sign-in lasts `max_age` however busy it is (Litestar would renew it on every response), and, with an
      `idle_timeout`, ends sooner once nothing has been asked of it for that long.
    - The cookie is sent at sign-in and cleared when the session ends, not on every response.
    """

    config: SessionConfig

    def get_session_id(self, connection: ASGIConnection) -> str | None:
        return connection.state.get(_FRESH_SESSION_ID) or connection.state.get(_STORED_SESSION_ID)

    async def load_from_connection(self, connection: ASGIConnection) -> dict[str, Any]:
        if (session_id := presented_session_id(connection)) is None:
            return {}
        store = self.config.get_store_from_app(connection.scope["app"])
        session = await load_session(store, session_id, renew_for=self.config.idle_timeout)
        if session is None:
            return {}
        connection.state[_STORED_SESSION_ID] = session_id
        return session

    async def store_in_message(self, scope_session: ScopeSession, message: Message, connection: ASGIConnection) -> None:
        store = self.config.get_store_from_app(connection.scope["app"])
        if fresh := connection.state.get(_FRESH_SESSION_ID):
            if scope_session and scope_session is not Empty:
                await store.set(fresh, self.serialize_data(scope_session), expires_in=self._first_expiry())
                self._set_cookie(message, fresh, max_age=self.config.max_age)
            return
        if scope_session is Empty and (stored := connection.state.get(_STORED_SESSION_ID)):
            await store.delete(stored)
            self._set_cookie(message, "", max_age=0)

    def _first_expiry(self) -> int:
        idle = self.config.idle_timeout
        return min(idle, self.config.max_age) if idle else self.config.max_age

    def _set_cookie(self, message: Message, value: str, max_age: int) -> None:
        cookie = Cookie(
            key=self.config.key,
            value=value,
            max_age=max_age,
            path=self.config.path,
            domain=self.config.domain,
            secure=self.config.secure,
            httponly=self.config.httponly,
            samesite=self.config.samesite,
        )
        MutableScopeHeaders.from_message(message).add("Set-Cookie", cookie.to_header(header=""))


@dataclass
class SessionConfig(ServerSideSessionConfig):
    _backend_class = SessionBackend
    idle_timeout: int | None = None
    """End a session once it has been sent no request for this many seconds; `None`: only `max_age` ends it."""


def session_config(settings: Settings) -> SessionConfig:
    return SessionConfig(
        key=SESSION_COOKIE,
        store=SESSION_STORE,
        session_id_bytes=SESSION_ID_BYTES,
        max_age=settings.session_max_age_seconds,
        idle_timeout=settings.session_idle_timeout_seconds,
        httponly=True,
        samesite="strict",
        secure=settings.session_cookie_secure,
    )


def session_store(redis: Redis, settings: Settings) -> RedisStore:
    return RedisStore(redis, namespace=f"{settings.redis_prefix}:sessions")


def presented_session_id(connection: ASGIConnection) -> str | None:
    """The cookie's session id if it has the shape of one this service makes (a 60 KB cookie is no key to look up)."""
    presented = connection.cookies.get(SESSION_COOKIE, "")
    return presented if SESSION_ID.fullmatch(presented) else None


async def load_session(store: Store, session_id: str, renew_for: int | None = None) -> dict[str, Any] | None:
    """The stored session if it has not ended; one past its lifetime is deleted."""
    if (data := await store.get(session_id, renew_for=renew_for)) is None:
        return None
    session = SessionBackend.deserialize_data(data)
    if time() >= session.get(ENDS_AT, 0):
        await store.delete(session_id)
        return None
    return session


async def start_session(connection: ASGIConnection, client: str) -> None:
    """Signs the connection in as `client` (a key's fingerprint) under a new session id, dropping the old session."""
    store = connection.app.stores.get(SESSION_STORE)
    if old := connection.state.get(_STORED_SESSION_ID):
        await store.delete(old)
    lifetime_s = connection.app.state.settings.session_max_age_seconds
    connection.state[_FRESH_SESSION_ID] = secrets.token_hex(SESSION_ID_BYTES)
    connection.set_session({CLIENT: client, CSRF: secrets.token_urlsafe(32), ENDS_AT: time() + lifetime_s})


async def session_lives_on(connection: ASGIConnection) -> bool:
    """Whether the session this connection came with is still signed in: not signed out, not past its lifetime or
    idle timeout, its key not revoked. Asks the store again (without renewing the session), for connections that
    outlive a request: the event stream."""
    if (session_id := connection.state.get(_STORED_SESSION_ID)) is None:
        return False
    session = await load_session(connection.app.stores.get(SESSION_STORE), session_id)
    return session is not None and await connection.app.state.api_keys.is_active(session.get(CLIENT, ""))


def csrf_token(connection: ASGIConnection) -> str:
    return _session(connection).get(CSRF, "")


def carries_csrf_token(connection: ASGIConnection) -> bool:
    expected = _session(connection).get(CSRF)
    presented = connection.headers.get(CSRF_HEADER, "")
    return bool(expected) and hmac.compare_digest(presented.encode(), expected.encode())


async def session_client(connection: ASGIConnection) -> str | None:
    """The dashboard's scheme: the fingerprint of the key the session signed in with while that key is still
    accepted, else `None`. A write without the session's token is refused outright (403)."""
    fingerprint = _session(connection).get(CLIENT)
    if not fingerprint or not await connection.app.state.api_keys.is_active(fingerprint):
        return None
    if connection.scope.get("method", "GET") not in SAFE_METHODS and not carries_csrf_token(connection):
        raise PermissionDeniedException(f"This write lacks the session's {CSRF_HEADER} header: reload the page.")
    return fingerprint


async def signed_in(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Everything under the dashboard's router needs a session. Its writes run `session_client` once more through
    their own guard (the API's `writer_guard`); both look at the same session, and the key check is cached."""
    if await session_client(connection) is None:
        raise NotAuthorizedException(
            "Sign in on the dashboard first: the session is missing, expired or its key revoked."
        )


def _session(connection: ASGIConnection) -> dict[str, Any]:
    # `connection.session` raises where no session middleware runs (the API's routes): no session there.
    session = connection.scope.get("session")
    return session if isinstance(session, dict) else {}
