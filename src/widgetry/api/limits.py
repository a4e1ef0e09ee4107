"""What one client may take: requests per time window, and event streams held open at once.

Both limits count per client: the digest of an accepted API key, or the client address when no valid key is sent.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware

from widgetry.api.problems import problem_exception
from widgetry.api.security import AUTHENTICATE, Authenticate, presented_key
from widgetry.services.unavailable import is_unavailable
from widgetry.settings import Settings

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

PERIOD_S = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SYNC_INTERVAL_S = 0.05
"""How often a web process adds its counts to the shared ones in Redis and reads back the totals. Between two syncs
a process decides from the totals it last read plus its own counts, so several processes together can let through
at most this long's worth of one client's requests beyond a budget: a guard against floods, not an exact quota."""
SYNC_TIMEOUT_S = 1.0
"""A Redis that hangs (rather than refusing) holds back one sync, never a request: counting goes on in memory."""
SYNC_RETRY_S = 1.0
"""How often syncs are tried while Redis is unavailable."""
RATE_LIMIT_EXEMPT = "rate_limit_exempt"
"""A route `opt` key: routes that set it (probes, problem pages, metrics, static files) are never rate limited."""
STREAM_RETRY_AFTER_S = 5
"""Nothing tells when one of a client's streams will end; a few seconds keeps a reconnecting client polite."""

STREAMS_SLUG = "too-many-streams"


def client_identity(connection: ASGIConnection) -> str:
    """Whom a limit counts against: an accepted API key by its digest, otherwise the client address.

    Only an accepted key gets a budget of its own: counting by whatever key is presented would give every made-up
    key a fresh budget. The digest, never the key, is what lands in store keys. The address is the peer's, or the
    one a trusted proxy forwarded (`WIDGETRY_TRUSTED_PROXIES`, applied by the server before the app sees it).
    """
    if fingerprint := connection.app.state.api_keys.fingerprint(presented_key(connection)):
        return f"key:{fingerprint}"
    return f"address:{connection.client.host if connection.client else 'unknown'}"


class Verdict(NamedTuple):
    budget: Budget
    remaining: int
    reset_s: int
    """Seconds until the current window ends."""
    retry_after_s: int | None
    """Set when the request is refused: seconds until the client's estimate falls back under the budget."""

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Policy": self.budget.policy,
            "RateLimit-Limit": str(self.budget.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s if self.retry_after_s is None else self.retry_after_s),
        }


class Window:
    """One client's count in the budget's current window, as this process knows it."""

    __slots__ = ("index", "local", "previous", "shared", "synced")

    def __init__(self, index: int, previous: int = 0) -> None:
        self.index = index
        """Which window: wall-clock time divided by the period, so every process agrees on it."""
        self.shared = 0
        """The total of every process for this window, as the last sync read it."""
        self.local = 0
        """This process's requests in this window that `shared` does not count yet."""
        self.previous = previous
        """The previous window's total, weighted down as the current window goes by."""
        self.synced = False
        """Whether a sync has set this window's expiry and read the previous one's total (once per window)."""


class Budget:
    """`limit` requests per `period_s` for each client, counted as a sliding window: the previous window's count,
    weighted by how much of it the sliding window still covers, plus the current one's. That is two numbers per
    client, whatever the rate (Litestar's limiter kept one timestamp per request), and no burst of twice the budget
    at a window's edge (a fixed window allows one)."""

    def __init__(self, name: str, limit: int, unit: str) -> None:
        self.name = name
        self.limit = limit
        self.unit = unit
        self.period_s = PERIOD_S[unit]
        self.policy = f"{limit}; w={self.period_s}"
        self.windows: dict[str, Window] = {}
        self.unsent: Counter[tuple[str, int]] = Counter()
        """Requests taken since the last sync, by client and window."""
        self.forgotten_before = 0

    @classmethod
    def of(cls, name: str, rate: str) -> Budget | None:
        """From a setting, `<count>/<second|minute|hour|day>`; `None` for `off`."""
        if (parsed := Settings.rate(rate)) is None:
            return None
        return cls(name, *parsed)

    def take(self, client: str, now: float) -> Verdict:
        """Counts one request of `client` at `now`, unless its budget is spent. Nothing here waits on Redis."""
        position = now / self.period_s
        index = int(position)
        window = self.windows.get(client)
        if window is None:
            window = self.windows[client] = Window(index)
        elif window.index != index:
            ended = window.shared + window.local if window.index == index - 1 else 0
            window = self.windows[client] = Window(index, ended)
        elapsed = position - index
        current = window.shared + window.local
        used = window.previous * (1 - elapsed) + current
        reset_s = math.ceil((1 - elapsed) * self.period_s)
        if used + 1 > self.limit:
            return Verdict(self, 0, reset_s, self._retry_after_s(window.previous, current, elapsed))
        window.local += 1
        self.unsent[client, index] += 1
        return Verdict(self, int(self.limit - used - 1), reset_s, None)

    def _retry_after_s(self, previous: int, current: int, elapsed: float) -> int:
        """When the estimate next leaves room for one request: later in this window as the previous one's weight
        fades, or, if this window alone is spent, in the next one as this window's weight fades in turn."""
        room = self.limit - 1
        this_window = current <= room
        wait = 1 - (room - current) / previous - elapsed if this_window else 2 - elapsed - room / current
        return max(1, math.ceil(wait * self.period_s))

    def first_sync(self, client: str, index: int) -> bool:
        """Whether this is the first sync of `client`'s window `index` in this process (and marks it done)."""
        window = self.windows.get(client)
        if window is None or window.index != index or window.synced:
            return False
        window.synced = True
        return True

    def settle(self, client: str, index: int, sent: int, total: int, previous: int | None) -> None:
        """Takes in the totals a sync read back after adding the `sent` requests of `client` in window `index`."""
        window = self.windows.get(client)
        if window is None:
            return
        if window.index == index:
            window.shared = total
            window.local -= sent
            if previous is not None:
                window.previous = max(window.previous, previous)
        elif window.index == index + 1:
            window.previous = max(window.previous, total)

    def key(self, namespace: str, client: str, index: int) -> str:
        return f"{namespace}:{self.name}:{client}:{index}"

    def forget_before(self, index: int) -> None:
        """Drops what no longer weighs on any estimate: windows older than the previous one. Once per window, since
        it looks at every client seen."""
        if index <= self.forgotten_before:
            return
        self.forgotten_before = index
        for client in [client for client, window in self.windows.items() if window.index < index - 1]:
            del self.windows[client]
        for sent in [sent for sent in self.unsent if sent[1] < index - 1]:
            del self.unsent[sent]


class RateLimiter:
    """The budgets of this web process, counted in memory on each request and summed across processes in Redis.

    Not the `limits` library, nor any check that asks Redis on each request: one redis-py round trip costs about
    0.1 ms of CPU (measured on the 2-core machines this service is benchmarked on, with `limits`' own sliding window
    at 0.11-0.15 ms), which is the whole allowance for rate limiting a request. Here a request costs a dictionary
    look-up and some arithmetic, and the counts of all clients go to Redis together, every `SYNC_INTERVAL_S` while
    requests come, in one pipelined round trip.
    """

    def __init__(
        self,
        redis: Redis | None,
        namespace: str,
        writes: Budget | None,
        reads: Budget | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        """`None` keeps the counts in this process: on the embedded defaults there is one process, and nothing to
        share them with."""
        self.namespace = namespace
        self.writes = writes
        self.reads = reads
        self.clock = clock
        self._synced_at = 0.0
        self._interval_s = SYNC_INTERVAL_S
        self._sync: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, redis: Redis, settings: Settings) -> RateLimiter | None:
        """`None` when both budgets are off."""
        writes = Budget.of("writes", settings.rate_limit_writes)
        reads = Budget.of("reads", settings.rate_limit_reads)
        if writes is None and reads is None:
            return None
        return cls(None if settings.embedded_redis else redis, f"{settings.redis_prefix}:rate-limit", writes, reads)

    def budget_for(self, method: str) -> Budget | None:
        return self.writes if method in WRITE_METHODS else self.reads

    def sync_soon(self, now: float) -> None:
        """Starts a sync when the last one is `SYNC_INTERVAL_S` old and done: at most one is ever in flight."""
        if now - self._synced_at >= self._interval_s and (self._sync is None or self._sync.done()):
            self._synced_at = now
            self._sync = asyncio.create_task(self.sync())

    async def sync(self) -> None:
        """Adds this process's new counts to the shared totals and reads the totals back, all in one round trip:
        one command per client and window, three on the window's first sync (its expiry, the previous total)."""
        budgets = [budget for budget in (self.writes, self.reads) if budget is not None]
        sent = [(budget, budget.unsent) for budget in budgets]
        for budget in budgets:
            budget.unsent = Counter()
        if self.redis is None:
            self._forget(budgets)
            return
        firsts: list[bool] = []
        try:
            async with asyncio.timeout(SYNC_TIMEOUT_S), self.redis.pipeline(transaction=False) as pipe:
                for budget, counts in sent:
                    for client, index in counts:
                        key = budget.key(self.namespace, client, index)
                        pipe.incrby(key, counts[client, index])
                        firsts.append(first := budget.first_sync(client, index))
                        if first:
                            pipe.expire(key, 2 * budget.period_s)
                            pipe.get(budget.key(self.namespace, client, index - 1))
                replies = await pipe.execute()
        except Exception as error:
            if not is_unavailable(error):
                logger.exception("rate limit counts not synced")
            elif self._interval_s == SYNC_INTERVAL_S:
                logger.warning("rate limits counted per process only, Redis is unavailable: %r", error)
            # Each process goes on counting its own requests meanwhile, and sends them once Redis is back.
            self._interval_s = SYNC_RETRY_S
            for budget, counts in sent:
                budget.unsent.update(counts)
                for window in budget.windows.values():
                    window.synced = False
        else:
            self._interval_s = SYNC_INTERVAL_S
            totals, first = iter(replies), iter(firsts)
            for budget, counts in sent:
                for (client, index), count in counts.items():
                    total, previous = int(next(totals)), None
                    if next(first):
                        _expiry_set, previous = next(totals), int(next(totals) or 0)
                    budget.settle(client, index, count, total, previous)
        self._forget(budgets)

    def _forget(self, budgets: list[Budget]) -> None:
        for budget in budgets:
            budget.forget_before(int(self.clock() / budget.period_s))


class RateLimit(ASGIMiddleware):
    """Refuses a request over its client's budget (writes and reads have one each) with a problem that says when to
    retry, and tells every counted response where its client stands (`RateLimit-*`).

    The limiter lives in the app's state (`rate_limiter`), not here: Litestar builds a middleware stack per route.
    """

    scopes = (ScopeType.HTTP,)
    exclude_opt_key = RATE_LIMIT_EXEMPT

    @staticmethod
    def should_bypass_for_scope(scope: Scope) -> bool:
        """The API docs: Litestar mounts their handlers itself, where no `opt` of ours reaches."""
        return scope["path"] == "/schema" or scope["path"].startswith("/schema/")

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        connection = ASGIConnection(scope, receive, send)
        limiter: RateLimiter = connection.app.state.rate_limiter
        budget = limiter.budget_for(scope["method"])
        if budget is None:
            await next_app(scope, receive, send)
            return
        now = limiter.clock()
        verdict = budget.take(client_identity(connection), now)
        limiter.sync_soon(now)
        if verdict.retry_after_s is not None:
            raise problem_exception(
                429,
                f"More than {budget.limit} {budget.name} per {budget.unit}: retry in {verdict.retry_after_s} s.",
                headers={**verdict.headers(), "Retry-After": str(verdict.retry_after_s)},
            )
        counted = [(name.lower().encode(), value.encode()) for name, value in verdict.headers().items()]

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *counted]
            await send(message)

        await next_app(scope, receive, send_counted)


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
