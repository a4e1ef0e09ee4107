"""API keys: accepted as `X-API-Key: <key>` or `Authorization: Bearer <key>`, compared as hashes in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler


class ApiKeys:
    """Holds only digests of the keys, so a key is never kept or logged in the clear after start-up."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(key) for key in keys)

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


async def api_key_guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    # Async although it does not await: Litestar runs a synchronous guard in a worker thread, on every request.
    if not connection.app.state.api_keys.accepts(presented_key(connection)):
        raise NotAuthorizedException(
            "A valid API key is required: send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'.",
            headers={"WWW-Authenticate": 'Bearer realm="widgetry"'},
        )


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
