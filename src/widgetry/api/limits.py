"""What one client may take: requests per time window, and event streams held open at once.

Both limits count per client: the digest of an accepted API key, or the client address when no valid key is sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from time import time
from typing import TYPE_CHECKING

from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.middleware.rate_limit import DURATION_VALUES, CacheObject, RateLimitConfig, RateLimitMiddleware
from litestar.stores.redis import RedisStore

from widgetry.api.problems import problem_exception
from widgetry.api.security import AUTHENTICATE, Authenticate, presented_key
from widgetry.connections import is_unavailable

if TYPE_CHECKING:
    from litestar.stores.base import Store
    from litestar.types import ASGIApp, Receive, Scope, Send
    from redis.asyncio import Redis

    from widgetry.settings import Settings

logger = logging.getLogger(__name__)

STORE_TIMEOUT_S = 0.25
"""How long a request waits on Redis for its rate-limit window: Litestar holds a lock per route meanwhile, so a Redis
that hangs (rather than refusing) would otherwise queue every request behind its socket timeout."""
RATE_LIMIT_STORE = "rate_limit"
RATE_LIMIT_EXEMPT = "rate_limit_exempt"
"""A route `opt` key: routes that set it (health and readiness probes) are never rate limited."""
STREAM_RETRY_AFTER_S = 5
"""Nothing tells when one of a client's streams will end; a few seconds keeps a reconnecting client polite."""

STREAMS_SLUG = "too-many-streams"


def client_identity(connection: ASGIConnection) -> str:
    """Whom a limit counts against: an accepted API key by its digest, otherwise the client address.

    Only an accepted key gets a budget of its own: counting by whatever key is presented would give every made-up
    key a fresh budget. The digest, never the key, is what lands in store keys.
    """
    if fingerprint := connection.app.state.api_keys.fingerprint(presented_key(connection)):
        return f"key:{fingerprint}"
    return f"address:{connection.client.host if connection.client else 'unknown'}"


class RateLimit(RateLimitMiddleware):
    """Litestar's fixed-window rate limiter, refusing with a problem that says when to retry.

    Litestar's own refusal carries the `RateLimit-*` headers but no `Retry-After`; the refusal is made here, where
    the window's history is at hand, and the limiter's own check then never fires. Litestar reads and writes the
    window without a transaction, so concurrent requests on other routes or in other processes can slip a few past
    the budget: a guard against floods, not an exact quota.
    """

    async def retrieve_cached_history(self, key: str, store: Store) -> CacheObject:
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                window = await super().retrieve_cached_history(key, store)
        except Exception as error:
            if not is_unavailable(error):
                raise
            # Redis down must not refuse writes that the database can still record (they are queued on recovery):
            # the limiter fails open, with an empty window, until Redis is back.
            logger.warning("rate limit not checked, Redis is unavailable: %r", error)
            return CacheObject(history=[], reset=int(time()) + DURATION_VALUES[self.unit])
        if len(window.history) >= self.max_requests:
            retry_after = max(1, window.reset - int(time()))
            raise problem_exception(
                429,
                f"More than {self.max_requests} requests per {self.unit}: retry in {retry_after} s.",
                headers={**self.create_response_headers(window), "Retry-After": str(retry_after)},
            )
        return window

    async def set_cached_history(self, key: str, cache_object: CacheObject, store: Store) -> None:
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                await super().set_cached_history(key, cache_object, store)
        except Exception as error:
            if not is_unavailable(error):
                raise


def rate_limit_config(settings: Settings) -> RateLimitConfig | None:
    """Every route but the probes (opted out by `RATE_LIMIT_EXEMPT`) and the API docs; `None` when the limit is off."""
    if (rule := settings.rate_limit_rule) is None:
        return None
    return RateLimitConfig(
        rate_limit=rule,
        identifier_for_request=client_identity,
        exclude=[r"^/schema(/|$)"],
        exclude_opt_key=RATE_LIMIT_EXEMPT,
        middleware_class=RateLimit,
        store=RATE_LIMIT_STORE,
    )


def rate_limit_store(redis: Redis, settings: Settings) -> RedisStore:
    """On the app's own Redis client, so every web process shares the windows; the app closes the client."""
    return RedisStore(redis, namespace=f"{settings.redis_prefix}:rate-limit")


class OpenStreams:
    """The event streams each client holds open in this web process.

    Counted in memory rather than in Redis: a process that crashes takes its connections and its counts with it,
    where counts in Redis would stay behind and lock clients out. The cost is that the cap holds per web process.
    """

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self._open: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return self._open.total()

    def open(self, client: str) -> bool:
        """Takes a place for `client`, or answers `False` when it holds its cap already."""
        if self._open[client] >= self.per_client:
            return False
        self._open[client] += 1
        return True

    def close(self, client: str) -> None:
        self._open[client] -= 1
        if self._open[client] <= 0:
            del self._open[client]


async def stream_client(connection: ASGIConnection) -> str:
    """Whom a stream counts against: as `client_identity` says, except under a router that signs in its own way
    (`AUTHENTICATE`: the dashboard's session), where a signed-in stream counts against the key it signed in with.
    The dashboard is then never locked out by anonymous streams from its address (one office, one proxy)."""
    authenticate: Authenticate | None = connection.route_handler.opt.get(AUTHENTICATE)
    if authenticate is not None and (client := await authenticate(connection)):
        return f"key:{client.fingerprint}"
    return client_identity(connection)


class StreamLimit(ASGIMiddleware):
    """Litestar limits request rates but not connections held open, hence this.

    Refuses an event stream over the client's cap before any of it is sent, and gives the place back when the
    stream ends for any reason: the response runs inside this call, so the `finally` sees every ending (client
    gone, slow consumer closed, shutdown). Not a dependency or the stream generator's `finally`: a response that
    never starts iterating its generator would never run that cleanup.

    The counts live in the app's state (`open_streams`), not here: Litestar copies middleware along with the route
    handlers it registers, and a middleware holds no state of its own.
    """

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        connection = ASGIConnection(scope, receive, send)
        streams: OpenStreams = connection.app.state.open_streams
        client = await stream_client(connection)
        if not streams.open(client):
            raise problem_exception(
                429,
                f"At most {streams.per_client} event streams may be open at once per client; close one first.",
                slug=STREAMS_SLUG,
                title="Too many streams",
                headers={"Retry-After": str(STREAM_RETRY_AFTER_S)},
            )
        try:
            await next_app(scope, receive, send)
        finally:
            # Synchronous: a cancelled response (client disconnect) still gives the place back.
            streams.close(client)
