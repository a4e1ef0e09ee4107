"""The dashboard's sign-in: an API key presented once on the sign-in page, then a session cookie.

The session lives server-side, in a Litestar store over the app's Redis client (fakeredis on the embedded defaults),
rather than in an encrypted cookie: every web process then sees the same sessions with no secret to configure and
share between them, and signing out deletes the session instead of trusting the browser to forget a cookie.
It holds the key's fingerprint (never the key) and a token that every write must carry in a header.
"""

from __future__ import annotations

import hmac
import secrets
from typing import TYPE_CHECKING, Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.session.server_side import ServerSideSessionBackend, ServerSideSessionConfig
from litestar.stores.redis import RedisStore
from redis.asyncio import Redis

from widgetry.settings import Settings

if TYPE_CHECKING:
    from litestar.types import Message, ScopeSession

    from widgetry.api.security import Client

SESSION_STORE = "sessions"
SESSION_COOKIE = "widgetry_session"
CLIENT = "client"
"""The session's API key fingerprint."""
CSRF = "csrf"
CSRF_HEADER = "X-CSRF-Token"
"""A cross-site form can send the session cookie (from a sibling subdomain, where SameSite does not help) but cannot
set a header, nor read the token from the page."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_FRESH_SESSION_ID = "fresh_session_id"


class SessionBackend(ServerSideSessionBackend):
    """Litestar keeps a session's id for as long as the cookie lives: signing in here moves the session to a new id,
    so an id planted in a browser before it signs in (session fixation) never becomes a signed-in session."""

    def get_session_id(self, connection: ASGIConnection) -> str:
        return connection.state.get(_FRESH_SESSION_ID) or super().get_session_id(connection)

    async def store_in_message(self, scope_session: ScopeSession, message: Message, connection: ASGIConnection) -> None:
        # Litestar stores a session for every response, an empty one too: each visit of someone who never signs in
        # would leave a key in Redis.
        if scope_session == {} and not connection.cookies.get(self.config.key):
            return
        await super().store_in_message(scope_session, message, connection)


class SessionConfig(ServerSideSessionConfig):
    _backend_class = SessionBackend


def session_config(settings: Settings) -> SessionConfig:
    return SessionConfig(
        key=SESSION_COOKIE,
        store=SESSION_STORE,
        max_age=settings.session_max_age_seconds,
        httponly=True,
        samesite="strict",
        secure=settings.session_cookie_secure,
    )


def session_store(redis: Redis, settings: Settings) -> RedisStore:
    return RedisStore(redis, namespace=f"{settings.redis_prefix}:sessions")


async def start_session(connection: ASGIConnection, client: str) -> None:
    """Signs the connection in as `client` (a key's fingerprint) under a new session id, dropping the old session."""
    if old := connection.cookies.get(SESSION_COOKIE):
        await connection.app.stores.get(SESSION_STORE).delete(old)
    connection.state[_FRESH_SESSION_ID] = secrets.token_hex(32)
    connection.set_session({CLIENT: client, CSRF: secrets.token_urlsafe(32)})


def csrf_token(connection: ASGIConnection) -> str:
    return _session(connection).get(CSRF, "")


def carries_csrf_token(connection: ASGIConnection) -> bool:
    expected = _session(connection).get(CSRF)
    presented = connection.headers.get(CSRF_HEADER, "")
    return bool(expected) and hmac.compare_digest(presented.encode(), expected.encode())


async def session_client(connection: ASGIConnection) -> Client | None:
    """The dashboard's scheme: the client of the key the session signed in with (its scopes too) while that key is
    still accepted, else `None`. A write without the session's token is refused outright (403)."""
    fingerprint = _session(connection).get(CLIENT)
    client = await connection.app.state.api_keys.client(fingerprint) if fingerprint else None
    if client is None:
        return None
    if connection.scope.get("method", "GET") not in SAFE_METHODS and not carries_csrf_token(connection):
        raise PermissionDeniedException(f"This write lacks the session's {CSRF_HEADER} header: reload the page.")
    return client


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
